"""A pretrained checkpoint directory: `model.pt` (a state_dict) + `meta.json` (`CheckpointMeta`).

The one reader/writer of the format (pretraining writes it, fine-tuning, selection, ranking, experts and
the sweep read it; a model folder, `rtl.artifacts.model_folder`, is a checkpoint with more meta).
Ray Train's per-epoch checkpoints add `train_state.pt` (optimizer, scheduler, finished epochs).

* Written atomically: into a temporary sibling directory, then renamed over the target, so a reader (or
  a crash mid-save) never sees a half-written checkpoint (`atomic_dir`).
* Loaded with `torch.load(weights_only=True)`: a checkpoint is data, never code.
* Older meta files load: every key but `model` and `num_classes` is optional and gets its default;
  unknown keys are kept (`CheckpointMeta` allows extras), so a newer writer's keys survive a rewrite.

torch is imported where a state dict is read or written, not at module import: the file names and the
meta reader are used by modules that never touch weights (the sweep's bookkeeping).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from rtl.artifacts.validation import validated
from rtl.errors import RtlError

MODEL_FILE = "model.pt"  # state_dict, torch.save; loaded with weights_only=True
META_FILE = "meta.json"  # CheckpointMeta
STATE_FILE = "train_state.pt"  # Ray Train epoch checkpoints only: {"epoch", "optimizer", "scheduler"}


class CheckpointMeta(BaseModel):
    """`meta.json` of a checkpoint. `model`/`num_classes`/`in_channels`/`head` describe the network
    (`rtl.models.backbones.create_model` rebuilds it); the rest says how it was pretrained. `epoch` is the
    number of finished epochs; `history` has one dict per epoch (epoch, train_loss, images, seconds, ...)."""

    model_config = ConfigDict(extra="allow")

    model: str
    num_classes: int
    in_channels: int = 3
    head: str = "linear"
    corpus_version: str | None = None
    strategy: str | None = None
    datasets: list[Any] | None = None
    domains: list[Any] | None = None
    class_table: list[Any] | None = None
    epoch: int | None = None
    history: list[dict[str, Any]] = []
    min_side: int | None = None
    max_side: int | None = None
    seed: int | None = None
    class_weights: dict[str, Any] | None = None
    config: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The meta as a plain dict: the keys on disk (unknown ones too) plus the non-None defaults
        (`in_channels`, `head`, `history`), so `meta.get(key, default)` behaves as on the raw file."""
        d = self.model_dump()
        return {k: v for k, v in d.items() if v is not None or k in self.model_fields_set}


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def meta_json(meta: dict[str, Any] | CheckpointMeta) -> str:
    """The text of `meta.json` (numpy scalars/arrays and Paths made JSON)."""
    if isinstance(meta, CheckpointMeta):
        meta = meta.as_dict()
    return json.dumps(meta, indent=2, default=_json_default)


def parse_meta(doc: Any, where: str | Path) -> CheckpointMeta:
    """Check a decoded `meta.json`; RtlError naming `where` and the field."""
    if not isinstance(doc, dict) or "model" not in doc or "num_classes" not in doc:
        raise RtlError(f"checkpoint {where} lacks 'model' / 'num_classes'")
    return validated(CheckpointMeta, doc, lambda loc, msg: f"checkpoint {where}: field {loc!r}: {msg}",
                     empty_loc="", error=RtlError)


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """`meta.json` of the checkpoint directory `path`, checked. Raises RtlError (one line)."""
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise RtlError(f"checkpoint {path} not found (expected a directory with {MODEL_FILE} and {META_FILE})")
    try:
        doc = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RtlError(f"checkpoint {meta_path} unreadable: {type(e).__name__}: {e}".splitlines()[0]) from None
    return parse_meta(doc, meta_path)


def has_weights(path: str | Path) -> bool:
    """True when `path` holds both checkpoint files (a complete upload / a usable --init)."""
    path = Path(path)
    return (path / MODEL_FILE).is_file() and (path / META_FILE).is_file()


def weights_sha(path: str | Path, n: int = 16) -> str:
    """First `n` hex digits of the sha256 of the checkpoint's `model.pt` (content identity for cache keys)."""
    import hashlib

    h = hashlib.sha256()
    with open(Path(path) / MODEL_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def read_state_dict(path: str | Path, *, map_location: Any = "cpu", file: str = MODEL_FILE) -> dict[str, Any]:
    """The state dict in `path/file` (weights_only=True). RtlError when missing, truncated or holding code."""
    import torch  # local: keeps torch out of rtl --help (the meta reader above is torch-free)

    p = Path(path) / file
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # missing, truncated, not a pickle, or holds code
        raise RtlError(f"checkpoint {p} unreadable: {type(e).__name__}: {e}".splitlines()[0]) from None


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` (an existing directory there is
    moved aside first and deleted after; restored when the swap fails). On error nothing changes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old = None
    try:
        yield tmp
        if path.exists():  # os.replace cannot replace a non-empty directory: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "ckpt")
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old / "ckpt", path)  # restore the previous checkpoint
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def save_state_dict(state: dict[str, Any], path: str | Path) -> None:
    """torch.save of a CPU copy of `state` (tensors detached) to the file `path`."""
    import torch  # local: keeps torch out of rtl --help

    torch.save({k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in state.items()}, path)


def write_checkpoint(path: str | Path, state: dict[str, Any], meta: dict[str, Any] | CheckpointMeta) -> Path:
    """Write a checkpoint directory atomically: `state` -> model.pt, `meta` -> meta.json. -> `path`."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_state_dict(state, tmp / MODEL_FILE)
        (tmp / META_FILE).write_text(meta_json(meta))
    return path
