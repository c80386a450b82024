"""A corpus' `manifest.json`: the one reader and writer of the file.

Written last by `rtl corpus build` (temp file + rename), so a folder without it is not a corpus (an
unfinished build). Read by the corpus view (`open_corpus`), the class table (`ClassTable.load`, which also
takes a plain JSON class list) and the build itself (an existing corpus' class ids are kept). The field
list is `Manifest` below; `version` is a content hash of the shards and class table (first 16 hex of a
sha256). Shard paths must stay inside the corpus folder: a manifest never makes rtl read elsewhere.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, TypedDict

from rtl.errors import RtlError

MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
REQUIRED = ("version", "classes", "datasets", "shards")

__all__ = ["MANIFEST_FILE", "SHARDS_DIR", "Manifest", "is_corpus", "load_json", "manifest_path", "read_manifest",
           "read_class_table_source", "read_existing_manifest", "write_manifest"]


class Manifest(TypedDict, total=False):
    """The keys of `manifest.json` (the four `REQUIRED` ones are checked by `read_manifest`)."""

    version: str  # content hash (16 hex)
    created: str
    params: dict[str, Any]  # min_side, max_side, cap, seed, ... as built
    datasets: dict[str, dict[str, Any]]  # name -> {domain: [...], root: abs path}
    classes: list[dict[str, Any]]  # [{id, dataset, label, domain}], id = index
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    size_hist_before: dict[str, Any]
    size_hist_after: dict[str, Any]
    rejects: list[dict[str, str]]  # {dataset, path, reason}
    warnings: list[str]
    shards: list[str]  # relative to the corpus folder, posix
    n_images_in: int
    n_images_kept: int
    n_images_ok: int
    n_rows_out: int
    seconds: float


def manifest_path(corpus: str | Path) -> Path:
    return Path(corpus) / MANIFEST_FILE


def is_corpus(corpus: str | os.PathLike[str]) -> bool:
    """True when `corpus` holds a manifest (a finished build). Cheap: no parsing."""
    return os.path.isfile(os.path.join(corpus, MANIFEST_FILE))


def load_json(path: Path, what: str, *, missing: str | None = None) -> Any:
    """Decoded JSON at `path`. RtlError `<path>: cannot read <what>: <reason>`, or `missing` when the file
    does not exist (FileNotFoundError counts as unreadable when `missing` is None)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        if missing is not None:
            raise RtlError(missing) from None
        raise RtlError(f"{path}: cannot read {what}: {e}") from None
    except (OSError, ValueError) as e:
        raise RtlError(f"{path}: cannot read {what}: {e}") from None


def read_manifest(corpus: str | Path) -> Manifest:
    """The checked manifest of corpus folder `corpus`. RtlError (one line, naming the folder or file) when
    the folder is missing, it is not a corpus, the file is unreadable or lacks a required key, or a shard
    path leaves the folder."""
    root = Path(corpus)
    mpath = root / MANIFEST_FILE
    if not root.is_dir():
        raise RtlError(f"{root}: corpus folder not found")
    manifest = load_json(mpath, "manifest", missing=f"{root}: not a corpus (no {MANIFEST_FILE}; an unfinished build?)")
    if not isinstance(manifest, dict):
        raise RtlError(f"{mpath}: not a corpus manifest (expected a JSON object)")
    for key in REQUIRED:
        if key not in manifest:
            raise RtlError(f"{mpath}: manifest has no '{key}'")
    shards = manifest["shards"]
    if not isinstance(shards, list) or not all(isinstance(s, str) for s in shards):
        raise RtlError(f"{mpath}: 'shards' must be a list of paths")
    for s in shards:  # shards live inside the corpus folder: never read a path the manifest points elsewhere
        p = PurePosixPath(s)
        if p.is_absolute() or ".." in p.parts or not s.strip():
            raise RtlError(f"{mpath}: shard path {s!r} is not inside the corpus folder")
    return manifest  # type: ignore[return-value]


def read_existing_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of a folder a build is about to update (None when it has none); not checked, since the
    build only takes its class table (`ClassTable.load` checks that)."""
    mpath = out / MANIFEST_FILE
    if not mpath.is_file():
        return None
    return load_json(mpath, "existing manifest")


def read_class_table_source(src: str | Path) -> Any:
    """What a `--class-table` path holds: a corpus folder's manifest, a manifest.json or a JSON class list
    (decoded, unchecked: `rtl.data.sampling.ClassTable.load` checks the entries)."""
    p = Path(src)
    if p.is_dir():
        p = p / MANIFEST_FILE
    return load_json(p, "class table", missing=f"{p}: class table not found")


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    """Write `out/manifest.json` atomically (temp file + rename). -> its path."""
    mpath = out / MANIFEST_FILE
    tmp = out / f".manifest-{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(tmp, mpath)
    return mpath
