"""A self-contained model folder: what a fine-tuned model needs to run on new images, and where it came from.

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
Preprocessing is the evaluation path of training (rtl.train.target_data.TargetDataset): decode_image ->
fit_size(min_side, max_side) -> to_channels -> centre `min_side` crop -> [0, 1] -> (x - mean) / std, so
serving never differs from how the model was selected (no train/serve skew; tests compare both).
Written atomically (temp dir + rename) like checkpoints: a reader never sees a half-written folder.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rtl.errors import RtlError

FORMAT = "rtl-model"
FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
META_FILE = "meta.json"
OK_NAMES = ("ok", "good", "normal", "pass", "non_defective")  # tried in order when no ok class is configured


def find_ok_class(classes: list[str], configured: str | None = None) -> str | None:
    """The "no defect" class: `configured` (must exist), else the first of OK_NAMES present, else None."""
    if configured:
        if configured not in classes:
            raise RtlError(f"ok class {configured!r} is not a class of the model/target ({', '.join(classes)})")
        return configured
    lower = {c.lower(): c for c in classes}
    return next((lower[n] for n in OK_NAMES if n in lower), None)


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


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
    from rtl.train.target_data import mean_std

    mean, std = mean_std(channels)
    return {"min_side": int(min_side), "max_side": int(max_side), "channels": int(channels),
            "mean": [float(v) for v in mean.flatten()], "std": [float(v) for v in std.flatten()],
            "crop": "center", "decode": "rtl.data.transforms.decode_image(keep_gray=True)"}


def save_model_dir(path: str | Path, model: nn.Module, *, classes: list[str], min_side: int, max_side: int,
                   metrics: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                   ok_class: str | None = None) -> Path:
    """Write `model` (a Backbone whose head has len(classes) outputs) as a model folder at `path`.

    An existing folder at `path` is replaced only once the new one is complete."""
    import rtl

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
        "provenance": _clean({"rtl_version": rtl.__version__, "torch_version": torch.__version__,
                              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                              **(provenance or {})}),
    }
    path = Path(path)
    try:
        return _write_atomic(path, model, meta)
    except OSError as e:
        raise RtlError(f"cannot write model folder {path}: {e.strerror or e}") from None


def _write_atomic(path: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old = None
    try:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / MODEL_FILE)
        meta["sha256"] = {MODEL_FILE: _sha256_file(tmp / MODEL_FILE)}
        meta["sha256"]["meta"] = _meta_digest(meta)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "m")
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old / "m", path)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return path


def read_model_meta(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """meta.json of a model folder, checked (format, required keys, digests). Raises RtlError."""
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
    for key in ("model", "num_classes", "classes", "preprocess", "sha256"):
        if key not in meta:
            raise RtlError(f"{mp}: missing field {key!r}")
    if len(meta["classes"]) != int(meta["num_classes"]):
        raise RtlError(f"{mp}: {len(meta['classes'])} class names for {meta['num_classes']} outputs")
    if verify:
        if meta["sha256"].get("meta") != _meta_digest(meta):
            raise RtlError(f"{mp}: content does not match its digest (edited or corrupted)")
        wp = path / MODEL_FILE
        if not wp.is_file():
            raise RtlError(f"model folder {path}: missing {MODEL_FILE}")
        if _sha256_file(wp) != meta["sha256"].get(MODEL_FILE):
            raise RtlError(f"{wp}: checksum mismatch (tampered or truncated copy)")
    return meta


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
    from rtl.data.transforms import fit_size, to_channels
    from rtl.train.target_data import crop

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
    from rtl.models.backbones import create_model

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
    from rtl.train.finetune import _init_model

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
            init_meta = json.loads((Path(cfg.init) / "meta.json").read_text())
        except (OSError, ValueError):
            init_meta = {}
        prov["init"] = {k: init_meta.get(k) for k in ("corpus_version", "strategy", "datasets", "domains",
                                                      "epoch", "seed", "class_weights")}
    return prov


__all__ = ["LoadedModel", "save_model_dir", "load_model_dir", "read_model_meta", "prepare_image",
           "model_from_finetune", "finetune_provenance", "find_ok_class", "build_model", "load_state_file"]
