"""The README's configuration reference names every key the schema accepts."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from jijian.config import DeployConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_documents_every_config_key():
    text = README.read_text(encoding="utf-8")
    missing = []
    for section, field in DeployConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            assert f"`[{section}]`" in text, f"section [{section}] is not documented"
            for key in annotation.model_fields:
                if not re.search(rf"`{re.escape(key)}`", text):
                    missing.append(f"{section}.{key}")
        elif not re.search(rf"`{re.escape(section)}`", text):
            missing.append(section)
    assert not missing, f"README.md does not document: {missing}"


def test_readme_quick_start_has_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "scripts/quickstart" in text and "scripts/test" in text
