"""A self-contained model folder: what a fine-tuned model needs to run on new images, and where it came from.

The folder layout, its `meta.json` fields and the one reader (`read_model_meta`) are
`rtl.artifacts.model_folder`; this module builds the network, writes it and prepares images for it.
Preprocessing is the evaluation path of training (rtl.train.target_data.TargetDataset): decode_image ->
fit_size(min_side, max_side) -> to_channels -> centre `min_side` crop -> [0, 1] -> (x - mean) / std, so
serving never differs from how the model was selected (no train/serve skew; tests compare both).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rtl import __version__
from rtl.artifacts.checkpoint import read_checkpoint_meta
from rtl.artifacts.model_folder import (
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    read_model_meta,
    write_model_folder,
)
from rtl.data.transforms import fit_size, to_channels
from rtl.errors import RtlError
from rtl.models.backbones import create_model
from rtl.train.finetune import _init_model
from rtl.train.target_data import crop, mean_std

OK_NAMES = ("ok", "good", "normal", "pass", "non_defective")  # tried in order when no ok class is configured


def find_ok_class(classes: list[str], configured: str | None = None) -> str | None:
    """The "no defect" class: `configured` (must exist), else the first of OK_NAMES present, else None."""
    if configured:
        if configured not in classes:
            raise RtlError(f"ok class {configured!r} is not a class of the model/target ({', '.join(classes)})")
        return configured
    lower = {c.lower(): c for c in classes}
    return next((lower[n] for n in OK_NAMES if n in lower), None)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, Paths -> str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def preprocess_spec(min_side: int, max_side: int, channels: int) -> dict[str, Any]:
    mean, std = mean_std(channels)
    return {"min_side": int(min_side), "max_side": int(max_side), "channels": int(channels),
            "mean": [float(v) for v in mean.flatten()], "std": [float(v) for v in std.flatten()],
            "crop": "center", "decode": "rtl.data.transforms.decode_image(keep_gray=True)"}


def save_model_dir(path: str | Path, model: nn.Module, *, classes: list[str], min_side: int, max_side: int,
                   metrics: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                   ok_class: str | None = None) -> Path:
    """Write `model` (a Backbone whose head has len(classes) outputs) as a model folder at `path`.

    An existing folder at `path` is replaced only once the new one is complete."""
    model = getattr(model, "module", model)
    nc = int(getattr(model, "num_classes", len(classes)))
    if nc != len(classes):
        raise RtlError(f"model has {nc} outputs but {len(classes)} class names were given")
    ch = int(getattr(model, "in_channels", 3))
    meta: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": getattr(model, "name", type(model).__name__), "num_classes": nc, "in_channels": ch,
        "head": getattr(model, "head_name", "linear"), "min_side": int(min_side), "max_side": int(max_side),
        "classes": list(classes), "ok_class": find_ok_class(list(classes), ok_class),
        "preprocess": preprocess_spec(min_side, max_side, ch),
        "metrics": _clean(metrics or {}),
        "provenance": _clean({"rtl_version": __version__, "torch_version": torch.__version__,
                              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                              **(provenance or {})}),
    }
    path = Path(path)
    try:
        return write_model_folder(path, model.state_dict(), meta)
    except OSError as e:
        raise RtlError(f"cannot write model folder {path}: {e.strerror or e}") from None


@dataclass
class LoadedModel:
    """A model folder in memory: the network (eval mode) and its meta."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.meta["preprocess"]

    def prepare(self, img: np.ndarray) -> Tensor:
        """(H, W, C) uint8 decoded image -> (C, min_side, min_side) float32, exactly as evaluation in training."""
        return prepare_image(img, self.preprocess)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, K) softmax probabilities."""
        return torch.softmax(self.model(x).float(), dim=1)


def prepare_image(img: np.ndarray, pre: dict[str, Any]) -> Tensor:
    """decode_image output -> model input with the model folder's preprocessing (fit, channels, crop, norm)."""
    lo, hi, ch = int(pre["min_side"]), int(pre["max_side"]), int(pre["channels"])
    img = to_channels(fit_size(img, lo, hi), ch)
    img = crop(img, lo, train=False)
    t = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)  # (C, S, S)
    mean = torch.tensor(pre["mean"]).view(-1, 1, 1)
    std = torch.tensor(pre["std"]).view(-1, 1, 1)
    return (t - mean) / std


def load_state_file(path: Path) -> dict[str, Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated, or holds code
        raise RtlError(f"{path} unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def build_model(meta: dict[str, Any], state: dict[str, Tensor], where: str = "model") -> nn.Module:
    """Rebuild the network described by `meta` and load `state` (strict); eval mode."""
    model = create_model(meta["model"], int(meta["num_classes"]), in_channels=int(meta.get("in_channels", 3)),
                         head=meta.get("head", "linear"))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise RtlError(f"{where}: weights do not fit {meta['model']}: {str(e).splitlines()[0]}") from None
    return model.eval()


def load_model_dir(path: str | Path, *, verify: bool = True) -> LoadedModel:
    """Load a model folder (weights with weights_only=True, digests checked). Raises RtlError."""
    path = Path(path)
    meta = read_model_meta(path, verify=verify)
    state = load_state_file(path / MODEL_FILE)
    return LoadedModel(build_model(meta, state, str(path / MODEL_FILE)), meta, path)


def model_from_finetune(cfg: Any, res: Any) -> tuple[nn.Module, tuple[int, int]]:
    """(network with the fine-tune's selected weights, (min_side, max_side)) from run_finetune's
    FinetuneConfig and a FinetuneResult made with keep_state=True."""
    if res.model_state is None:
        raise RtlError("fine-tune result holds no weights (run with keep_state=True)")
    model, sides = _init_model(cfg, len(res.classes))
    if getattr(model, "num_classes", None) != len(res.classes) or cfg.probe:
        model.reset_head(len(res.classes), "linear" if cfg.probe else cfg.head)
    model.load_state_dict(res.model_state)
    return model.eval(), sides


def finetune_provenance(cfg: Any, res: Any) -> dict[str, Any]:
    """Where a fine-tuned model came from: its config, seed, init checkpoint's corpus/subset/temperature."""
    prov: dict[str, Any] = {"finetune": cfg.model_dump() | {"seed": res.seed}, "seed": res.seed, "best_epoch": res.best_epoch,
                            "n_images": res.n_images, "target": os.path.basename(os.path.normpath(cfg.target))}
    if cfg.init not in ("scratch", "imagenet"):
        try:
            init_meta = read_checkpoint_meta(cfg.init).as_dict()
        except RtlError:
            init_meta = {}
        prov["init"] = {k: init_meta.get(k) for k in ("corpus_version", "strategy", "datasets", "domains",
                                                      "epoch", "seed", "class_weights")}
    return prov


__all__ = ["LoadedModel", "save_model_dir", "load_model_dir", "read_model_meta", "prepare_image",
           "model_from_finetune", "finetune_provenance", "find_ok_class", "build_model", "load_state_file",
           "FORMAT", "FORMAT_VERSION", "MODEL_FILE", "META_FILE"]
