"""YAML parsing with one-line errors that name the file and line (`file:line: malformed YAML: why`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rtl.errors import RtlError


def parse_yaml(text: str, path: str | Path, error: type[RtlError] = RtlError) -> Any:
    """`yaml.safe_load(text)`, raising `error` with `path:line` for a syntax error instead of a traceback."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        why = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{path}{line}: malformed YAML: {why}") from None
