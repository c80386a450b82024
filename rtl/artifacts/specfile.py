"""`spec.json` of a results dir (sweeps and studies): the resolved spec, written once, read by resume,
status and report. Owner-only modes (the dir 0700, the file 0600: it names the workspace's storages);
`storage.*` keep their `${VAR}` references, secrets are expanded where used, never written here."""

from __future__ import annotations

import json
import os
from typing import Any

from rtl.errors import ConfigError

SPEC_FILE = "spec.json"


def write_spec_json(data: dict[str, Any], path: str) -> None:
    """Atomic write of `data` to `path` (a results dir's spec.json), owner-only."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when a stale tmp file had another mode
    with open(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def read_spec_json(results_dir: str, *, what: str, hint: str) -> tuple[dict[str, Any], str]:
    """(data, path) of `<results_dir>/spec.json`; ConfigError naming `what` (sweep / study) and `hint`."""
    path = os.path.join(results_dir, SPEC_FILE)
    try:
        with open(path) as f:
            return json.load(f), path
    except OSError:
        raise ConfigError(f"{results_dir}: not a {what} results dir (no spec.json); pass {hint}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
