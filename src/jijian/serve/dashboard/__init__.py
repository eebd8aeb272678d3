"""The operator dashboard at /ui: training runs, knowledge base, serving, guard events and a chat playground.

Server-rendered HTML (Jinja2 templates, charts as inline SVG) plus one small script for the live
serving figures and the streaming chat; no build step, nothing loaded from outside the server.
"""

from jijian.serve.dashboard.routes import DashboardAuth, mount_dashboard
from jijian.serve.dashboard.sources import DashboardSources

__all__ = ["DashboardAuth", "DashboardSources", "mount_dashboard"]
