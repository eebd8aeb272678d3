"""jijian (基建): infrastructure for large language models — train, feed, plan, retrieve, serve, guard."""

__version__ = "0.1.0"
