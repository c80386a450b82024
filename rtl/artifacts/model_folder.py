"""A model folder: a fine-tuned model as delivered (`rtl sweep export`, `rtl finetune --save-model`, the
MLflow registry). The one reader of its `meta.json`; the writer with the network is
`rtl.deliver.model.save_model_dir`.

```
MODEL_DIR/
  model.pt     state_dict, loaded with torch.load(weights_only=True): a model folder is data, never code
  meta.json    checkpoint keys (model, num_classes, in_channels, head, min_side, max_side: so a model folder
               also works as `rtl finetune --init`), plus
               format "rtl-model" / format_version 1, classes (output index -> name), ok_class,
               preprocess {min_side, max_side, channels, mean, std, crop: "center"},
               metrics {...}, provenance {corpus_version, sources, temperature, finetune, seed, sweep, ...},
               sha256 {"model.pt": ..., "meta": ...}  (tampering or a truncated copy is refused at load)
```
Written atomically (`rtl.artifacts.checkpoint.atomic_dir`): a reader never sees a half-written folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rtl.artifacts.checkpoint import META_FILE, MODEL_FILE, atomic_dir, save_state_dict
from rtl.errors import RtlError

FORMAT = "rtl-model"
FORMAT_VERSION = 1
REQUIRED = ("model", "num_classes", "classes", "preprocess", "sha256")

__all__ = ["FORMAT", "FORMAT_VERSION", "MODEL_FILE", "META_FILE", "is_model_folder", "meta_digest",
           "read_model_meta", "sha256_file", "write_model_folder"]


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of the meta without its `sha256` entry (key order does not matter)."""
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def is_model_folder(path: str | Path) -> bool:
    """True when `path` is a directory with a meta.json (what `--out` may overwrite)."""
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


def write_model_folder(path: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write `state` (a state_dict) and `meta` (JSON-clean; `sha256` is filled in here) atomically."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_state_dict(state, tmp / MODEL_FILE)
        meta["sha256"] = {MODEL_FILE: sha256_file(tmp / MODEL_FILE)}
        meta["sha256"]["meta"] = meta_digest(meta)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    return path


def read_model_meta(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """meta.json of a model folder, checked (format, required keys, digests when `verify`). Raises RtlError."""
    path = Path(path)
    if not path.is_dir():
        raise RtlError(f"model folder {path} not found")
    mp = path / META_FILE
    try:
        meta = json.loads(mp.read_text())
    except FileNotFoundError:
        raise RtlError(f"model folder {path}: missing {META_FILE}") from None
    except (OSError, ValueError) as e:
        raise RtlError(f"model folder {path}: {META_FILE} unreadable ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RtlError(f"{mp}: not an rtl model folder (format {meta.get('format') if isinstance(meta, dict) else '?'!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise RtlError(f"{mp}: format_version {meta.get('format_version')} is newer than this rtl reads ({FORMAT_VERSION})")
    for key in REQUIRED:
        if key not in meta:
            raise RtlError(f"{mp}: missing field {key!r}")
    if len(meta["classes"]) != int(meta["num_classes"]):
        raise RtlError(f"{mp}: {len(meta['classes'])} class names for {meta['num_classes']} outputs")
    if verify:
        if meta["sha256"].get("meta") != meta_digest(meta):
            raise RtlError(f"{mp}: content does not match its digest (edited or corrupted)")
        wp = path / MODEL_FILE
        if not wp.is_file():
            raise RtlError(f"model folder {path}: missing {MODEL_FILE}")
        if sha256_file(wp) != meta["sha256"].get(MODEL_FILE):
            raise RtlError(f"{wp}: checksum mismatch (tampered or truncated copy)")
    return meta
