"""A target's source ranking (`rtl rank --json`; `<results>/rankings/<target>.json` in a ranked sweep).

Written by `rtl.select.rank`, read by the ranked sweep (`rtl.sweep.runner.target_order`) and reports.
Fields: version, target, corpus_version, generalist_digest, by, seeds, rows (one per source unit: the
signals, gain ± std, noise, verdict, rank, expert checkpoint), order (units best first), suggested,
verdict (one line), recommend, cost (expert vs generalist images). A sweep's ranking by specialists
(`search.sources.ranking.method: specialists`, rtl.sweep.specialists.ranking) has "method": "specialists"
and rows of (rank, unit, probe_loss, chosen) instead of the experts' signals and gains.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rtl.errors import RtlError

RANKING_VERSION = 1


def write_ranking(path: str | Path, ranking: dict[str, Any]) -> Path:
    """Atomic JSON write (temp file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(ranking, indent=1, default=float))
    tmp.replace(p)
    return p


def read_ranking(path: str | Path) -> dict[str, Any]:
    """The one reader of ranking JSON (the sweep reads it): version, order and rows checked."""
    p = Path(path)
    try:
        r = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise RtlError(f"{path}: unreadable ranking ({e})") from None
    if not isinstance(r, dict) or r.get("version") != RANKING_VERSION:
        raise RtlError(f"{path}: not an rtl ranking (version {RANKING_VERSION} expected)")
    for k in ("target", "order", "rows", "suggested", "corpus_version"):
        if k not in r:
            raise RtlError(f"{path}: ranking lacks {k!r}")
    if sorted(r["order"]) != sorted(x["unit"] for x in r["rows"]):
        raise RtlError(f"{path}: ranking order and rows name different units")
    return r
