"""Content-addressed pretraining cache shared by every trial (and sweep) of a workspace.

A key is the sha256 of everything that determines a pretrained checkpoint: corpus version, the sorted
source subset, the importance weights (temperature and a digest of the weight vector, since weights
depend on the target), backbone, schedule and seed. `get_or_create(key, build)`:

* hit: `<root>/<key>/` exists -> return it (it can only exist complete, see below);
* miss: take an exclusive `fcntl.flock` on `<root>/locks/<key>.lock`; re-check (another process may have
  built it while we waited); build into `<root>/tmp/<key>.<pid>.<uuid>/`, then `os.rename` it to
  `<root>/<key>/`. Concurrent callers with the same key block on the lock and then get the hit, so
  one pretraining runs instead of N.
* a builder killed mid-way leaves only a `tmp/` dir (never `<root>/<key>/`), and the kernel drops its
  flock, so the next caller builds again. Stale tmp dirs whose owner lock is free are deleted.

Limits: flock is reliable between processes on one node and on NFSv4 (byte-range locks through the
server); on NFSv3 without lockd, or on object stores (s3://), there is no lock — use a POSIX shared
filesystem for `storage.cache` on a cluster. Object stores would need a conditional-put scheme.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rtl.errors import RtlError


def cache_key(
    *,
    corpus_version: str,
    mask: list[str] | None,
    temperature: float | None,
    backbone: str,
    schedule: dict[str, Any],
    seed: int,
    weights_digest: str | None = None,
) -> str:
    """sha256 hex of the canonical JSON of the inputs (mask sorted: order never changes a pretraining)."""
    payload = {
        "corpus_version": corpus_version,
        "mask": sorted(mask) if mask is not None else None,
        "temperature": None if temperature is None else float(temperature),
        "weights": weights_digest,
        "backbone": backbone,
        "schedule": schedule,
        "seed": int(seed),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class PretrainCache:
    """`get_or_create(key, build_fn) -> Path`; `build_fn(tmp_dir)` writes a checkpoint into tmp_dir."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        if "://" in str(root):
            raise RtlError(f"cache dir {root}: must be a POSIX path (local or NFS), not an object store URI")
        self.root = Path(root)
        for d in ("locks", "tmp"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.waits = 0  # callers that blocked on another builder

    def path(self, key: str) -> Path:
        return self.root / key

    def contains(self, key: str) -> bool:
        return self.path(key).is_dir()

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[bool]:
        """Exclusive flock; yields True when we had to wait for another holder."""
        fd = os.open(self.root / "locks" / f"{key}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        waited = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield waited
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def get_or_create(self, key: str, build_fn: Callable[[Path], Any]) -> Path:
        final = self.path(key)
        if final.is_dir():
            self._count("hits")
            return final
        with self._lock(key) as waited:
            if final.is_dir():  # built by the holder we waited for
                self.waits += int(waited)
                self._count("hits")
                return final
            self._clean_tmp(key)
            tmp = self.root / "tmp" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                build_fn(tmp)
                os.rename(tmp, final)  # atomic on one filesystem: the entry appears complete or not at all
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._count("misses")
            return final

    def _clean_tmp(self, key: str) -> None:
        """Delete leftovers of killed builders of `key` (we hold its lock, so none is alive)."""
        for d in (self.root / "tmp").glob(f"{key}.*"):
            shutil.rmtree(d, ignore_errors=True)

    def _count(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        # a per-cache counter file so hits/misses across trial processes can be read by status/bench
        stats = self.root / "stats.jsonl"
        with open(stats, "a") as f:
            f.write(json.dumps({"t": time.time(), "event": {"hits": "hit", "misses": "miss"}[what],
                                "pid": os.getpid()}) + "\n")

    def stats(self) -> dict[str, int]:
        """Hits and misses recorded by every process that used this cache dir."""
        out = {"hit": 0, "miss": 0}
        p = self.root / "stats.jsonl"
        if p.exists():
            for line in p.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    out[json.loads(line)["event"]] += 1
        return out
