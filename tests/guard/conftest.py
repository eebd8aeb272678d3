"""Guard tests keep the trained-classifier cache in a temporary directory, not the user's ~/.cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_classifier_cache(tmp_path_factory):
    previous = os.environ.get("JIJIAN_CACHE_DIR")
    os.environ["JIJIAN_CACHE_DIR"] = str(tmp_path_factory.mktemp("jijian-cache"))
    yield
    if previous is None:
        os.environ.pop("JIJIAN_CACHE_DIR", None)
    else:
        os.environ["JIJIAN_CACHE_DIR"] = previous
