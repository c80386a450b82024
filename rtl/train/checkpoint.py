"""Checkpoints: a directory with `model.pt` (state_dict) and `meta.json`, written atomically.

Atomic = written into a temporary sibling directory, then renamed over the target, so a reader (or a
crash mid-save) never sees a half-written checkpoint. Loading uses `torch.load(weights_only=True)`:
a checkpoint is data, never code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rtl.errors import RtlError

MODEL_FILE = "model.pt"
META_FILE = "meta.json"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / DataParallel


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write `model`'s state_dict and `meta` (plus model/num_classes/in_channels/head) to directory `path`.

    An existing checkpoint at `path` is replaced only once the new one is complete.
    """
    path = Path(path)
    model = _unwrap(model)
    meta = dict(meta)
    for key, attr in (("model", "name"), ("num_classes", "num_classes"), ("in_channels", "in_channels"),
                      ("head", "head_name")):
        if hasattr(model, attr):
            meta[key] = getattr(model, attr)  # the model itself is the truth
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old = None
    try:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, tmp / MODEL_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
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
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise RtlError(f"checkpoint {path} not found (expected a directory with {MODEL_FILE} and {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RtlError(f"checkpoint {meta_path} unreadable: {type(e).__name__}: {e}".splitlines()[0]) from None
    if not isinstance(meta, dict) or "model" not in meta or "num_classes" not in meta:
        raise RtlError(f"checkpoint {meta_path} lacks 'model' / 'num_classes'")
    return meta


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model described by `meta.json` and load `model.pt` into it. -> (Backbone, meta)."""
    from rtl.models.backbones import create_model  # local import: backbones imports this module lazily

    path = Path(path)
    meta = read_meta(path)
    try:
        state = torch.load(path / MODEL_FILE, map_location=map_location, weights_only=True)
    except Exception as e:  # missing, truncated, not a pickle, or holds code
        raise RtlError(f"checkpoint {path / MODEL_FILE} unreadable: {type(e).__name__}: {e}".splitlines()[0]) from None
    model = create_model(meta["model"], int(meta["num_classes"]), in_channels=int(meta.get("in_channels", 3)),
                         head=meta.get("head", "linear"))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise RtlError(f"checkpoint {path / MODEL_FILE} does not fit {meta['model']}: {str(e).splitlines()[0]}") from None
    return model, meta
