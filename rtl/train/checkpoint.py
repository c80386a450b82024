"""Checkpoints of models being trained: save a Backbone, load one back.

The format (file names, `CheckpointMeta`, atomic writes, weights_only loading) is
`rtl.artifacts.checkpoint`; rebuilding the network is `rtl.models.backbones.load_checkpoint`. This module
keeps the training-side API (`save_checkpoint(path, model, meta)` takes the network description from the
model itself) and re-exports the rest for existing callers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from rtl.artifacts.checkpoint import META_FILE, MODEL_FILE, STATE_FILE, read_checkpoint_meta, write_checkpoint
from rtl.models.backbones import load_checkpoint


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / DataParallel


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write `model`'s state_dict and `meta` (plus model/num_classes/in_channels/head) to directory `path`.

    An existing checkpoint at `path` is replaced only once the new one is complete.
    """
    model = _unwrap(model)
    meta = dict(meta)
    for key, attr in (("model", "name"), ("num_classes", "num_classes"), ("in_channels", "in_channels"),
                      ("head", "head_name")):
        if hasattr(model, attr):
            meta[key] = getattr(model, attr)  # the model itself is the truth
    return write_checkpoint(path, model.state_dict(), meta)


def read_meta(path: str | Path) -> dict[str, Any]:
    """`meta.json` of checkpoint `path` as a dict (checked; missing optional keys get their defaults)."""
    return read_checkpoint_meta(path).as_dict()


__all__ = ["MODEL_FILE", "META_FILE", "STATE_FILE", "save_checkpoint", "read_meta", "load_checkpoint"]
