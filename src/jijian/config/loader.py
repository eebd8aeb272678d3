"""Reading `deploy.toml` into a DeployConfig, with errors that name the file, line and key path."""

from __future__ import annotations

import difflib
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from jijian.config.schema import DeployConfig


class ConfigError(Exception):
    """A config file could not be read or is invalid; `problems` holds one line per fault."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> DeployConfig:
    """Read and validate a deploy.toml; relative paths inside it are taken from its directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read config file: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"invalid TOML: {exc}"]) from None
    if overrides:
        data = _merge(data, overrides)
    return parse_config(data, source=str(path), base_dir=path.resolve().parent, text=text)


def parse_config(
    data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None, text: str | None = None
) -> DeployConfig:
    """Validate an already-parsed config mapping (e.g. built in code) into a DeployConfig."""
    data = dict(data)
    # Missing sections validate from their defaults with the same base directory as present ones.
    for section in DeployConfig.model_fields:
        if section != "name":
            data.setdefault(section, {"preset": "llama-tiny"} if section == "model" else {})
    try:
        return DeployConfig.model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as exc:
        raise ConfigError(source, [_describe(err, text) for err in exc.errors()]) from None


def dump_config(config: DeployConfig) -> str:
    """The resolved config as TOML (every default filled in, paths absolute)."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(err: Mapping[str, Any], text: str | None) -> str:
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc) or "(top level)"
    line = _find_line(text, loc) if text else None
    where = f"line {line}: " if line else ""
    if err["type"] == "extra_forbidden":
        return f"{where}unknown key '{key}'{_suggest(loc)}"
    if err["type"] == "missing":
        return f"{where}missing required key '{key}'"
    message = err["msg"].removeprefix("Value error, ")
    shown = err.get("input")
    got = "" if isinstance(shown, dict) or shown is None else f" (got {shown!r})"
    return f"{where}{key}: {message}{got}"


def _suggest(loc: list[str]) -> str:
    model: type[BaseModel] | None = DeployConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model else None
        model = _section_model(field.annotation) if field else None
    if model is None:
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(model.model_fields)})"


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `RopeScaling | None`."""
    candidates = typing.get_args(annotation) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _find_line(text: str, loc: list[str]) -> int | None:
    """Best-effort line of `loc` in the TOML text: the key inside its [section], else the section header."""
    lines = text.splitlines()

    def header_line(name: str) -> int | None:
        header = re.compile(rf"^\s*\[\s*{re.escape(name)}\s*\]\s*(#.*)?$")
        return next((i for i, line in enumerate(lines) if header.match(line)), None)

    def key_line(name: str, start: int) -> int | None:
        key = re.compile(rf"^\s*{re.escape(name)}\s*=")
        for i in range(start, len(lines)):
            if i > start and re.match(r"^\s*\[", lines[i]):
                return None
            if key.match(lines[i]):
                return i
        return None

    if not loc:
        return None
    if len(loc) == 1:  # a top-level key, or a whole [section]
        found = header_line(loc[0])
        found = found if found is not None else key_line(loc[0], 0)
        return None if found is None else found + 1
    section = header_line(loc[0])
    if section is None:
        return None
    # Deeper keys (inside an inline table such as `rope_scaling = {...}`) sit on their parent key's line.
    found = key_line(loc[1], section)
    return (found if found is not None else section) + 1
