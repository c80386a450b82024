"""Fine-tune a (pretrained) backbone on a target dataset and report honest val / test errors.

Protocol (what makes numbers comparable across source choices):
- the head is reset to the target's classes; the first `freeze_depth` stages are frozen;
- an optional regulariser pulls towards the start point (L2-SP, DELTA: rtl.train.regularizers);
- the validation error alone picks the best epoch (or, for the linear probe, the best C);
- the test error is computed ONCE, with the selected weights, and only reported;
- everything is seeded (python, numpy, torch, DataLoader shuffling/augmentation) so one seed = one
  reproducible run; `run_finetune_seeds` reports mean ± sample std over seeds;
- a run can be checkpointed after any epoch and resumed exactly (`state_callback` / `resume_state`).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rtl.data.convention import load_dataset
from rtl.errors import ConfigError, DatasetError
from rtl.models.backbones import Backbone, create_model
from rtl.train.checkpoint import load_checkpoint
from rtl.train.engine import FitConfig, OnEpoch, StateCallback, evaluate, fit
from rtl.train.finetune_config import FinetuneConfig  # noqa: F401 -- re-exported: the public name
from rtl.train.regularizers import build_regularizer
from rtl.train.target_data import TargetDataset


@dataclass
class FinetuneResult:
    val_error: float
    test_error: float | None
    per_class_accuracy: dict[str, float]  # on test (on val when the target has no test split)
    history: list[dict[str, Any]]
    best_epoch: int
    classes: list[str] = field(default_factory=list)
    seed: int = 0
    n_images: dict[str, int] = field(default_factory=dict)
    confusion: list[list[int]] | None = None  # test (or val), rows = true class
    stopped_early: bool = False
    model_state: dict[str, torch.Tensor] | None = None
    # `val_metrics` of run_finetune: `val_<m>` at the selected epoch, `test_<m>` with the selected weights
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("model_state")
        return d


@dataclass
class FinetuneSummary:
    results: list[FinetuneResult]
    val_mean: float
    val_std: float
    test_mean: float | None
    test_std: float | None
    per_class_mean: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"val_mean": self.val_mean, "val_std": self.val_std, "test_mean": self.test_mean,
                "test_std": self.test_std, "per_class_mean": self.per_class_mean,
                "runs": [r.to_dict() for r in self.results]}


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _default_sides(model: str) -> tuple[int, int]:
    return (32, 36) if model == "small_cnn" else (224, 256)


def _init_model(cfg: FinetuneConfig, num_classes: int) -> tuple[Backbone, tuple[int, int]]:
    """Model with a fresh head for the target classes, and the (min_side, max_side) to prepare images with."""
    if cfg.init in ("scratch", "imagenet"):
        model = create_model(cfg.model, num_classes, in_channels=cfg.in_channels, head=cfg.head,
                             weights=None if cfg.init == "scratch" else "imagenet")
        sides = _default_sides(cfg.model)
    else:
        model, meta = load_checkpoint(cfg.init)
        model.reset_head(num_classes, cfg.head)
        params = meta.get("params") or {}
        lo = meta.get("min_side") or params.get("min_side")
        hi = meta.get("max_side") or params.get("max_side")
        sides = (int(lo), int(hi or lo)) if lo else _default_sides(model.name)
    min_side = cfg.min_side or sides[0]
    max_side = cfg.max_side or max(min_side, sides[1])
    if max_side < min_side:
        raise ConfigError(f"max_side {max_side} < min_side {min_side}")
    return model, (min_side, max_side)


def load_target(cfg: FinetuneConfig, in_channels: int, sides: tuple[int, int]) -> dict[str, TargetDataset]:
    """Decoded + fitted target splits (train augments; val/test centre-crop)."""
    info = load_dataset(cfg.target)
    classes = info.classes()
    if len(classes) < 2:
        raise DatasetError(f"{cfg.target}: fine-tuning needs at least 2 classes, found {len(classes)}")
    splits: dict[str, Any] = {s: s for s in ("train", "val", "test")}
    if cfg.train_subset is not None:  # a study's smaller train size (rtl.data.subsample)
        keep, have = set(cfg.train_subset), {r.path for r in info.split("train")}
        if keep - have:
            raise DatasetError(f"{cfg.target}: train_subset: {sorted(keep - have)[0]!r} is not a train image")
        splits["train"] = [r for r in info.split("train") if r.path in keep]
    data = {s: TargetDataset(info, splits[s], classes=classes, in_channels=in_channels, min_side=sides[0],
                             max_side=sides[1], train=s == "train") for s in ("train", "val", "test")}
    for s in ("train", "val"):
        if len(data[s]) == 0:
            raise DatasetError(f"{cfg.target}: no usable {s} images (ImageSets/Main/{s}.txt)")
    return data


def _loader(ds: TargetDataset, cfg: FinetuneConfig, *, shuffle: bool, gen: torch.Generator | None) -> DataLoader:
    drop_last = shuffle and len(ds) > cfg.batch_size and len(ds) % cfg.batch_size == 1  # no BN batch of 1
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, drop_last=drop_last, generator=gen,
                      num_workers=cfg.num_workers, persistent_workers=False)


def run_finetune(cfg: FinetuneConfig | dict[str, Any], on_epoch: OnEpoch | None = None, *,
                 data: dict[str, TargetDataset] | None = None, resume_state: dict[str, Any] | None = None,
                 state_callback: StateCallback | None = None,
                 val_metrics: Callable[[np.ndarray, np.ndarray, list[str]], dict[str, float]] | None = None
                 ) -> FinetuneResult:
    """Fine-tune (or linear-probe) per `cfg`; `data` lets callers reuse decoded splits across seeds.

    Exact resume (Ray Tune trials restart from their last checkpoint): `state_callback(epoch, state)`
    receives after every epoch the engine's resumable state (`rtl.train.engine.fit`); calling again with
    the same `cfg` and `resume_state=state` continues with the next epoch and ends with the same history
    and weights as an uninterrupted run. The init checkpoint is still loaded (architecture, L2-SP/DELTA
    start point); its weights are then replaced by the saved ones. The linear probe has no epochs to
    resume: it ignores both arguments.

    `val_metrics(labels (N,), probs (N, K), classes)`: extra metrics (e.g. rtl.deliver.metrics'
    inspection metrics) computed from the val predictions after every epoch (history `val_<m>`, the
    selected epoch's as `best_val_<m>`) and once on the test split; they never change which epoch is
    selected (val error). Ignored by the linear probe."""
    cfg = FinetuneConfig.parse(cfg)
    gen = seed_everything(cfg.seed)
    probe_classes = None
    if data is not None:
        probe_classes = data["train"].classes
    model, sides = _init_model(cfg, len(probe_classes) if probe_classes else 2)
    if data is None:
        data = load_target(cfg, model.in_channels, sides)
    classes = data["train"].classes
    if model.num_classes != len(classes):
        model.reset_head(len(classes), cfg.head)
    seed_everything(cfg.seed)  # identical RNG state whatever the init path consumed
    n_images = {s: len(d) for s, d in data.items()}

    if cfg.probe:
        from rtl.train.probe import run_probe  # local: probe imports this module (FinetuneResult)

        res = run_probe(model, data, classes, device=cfg.device, batch_size=cfg.batch_size, on_epoch=on_epoch,
                        keep_state=cfg.keep_state)
        res.seed, res.n_images = cfg.seed, n_images
        return res

    model.freeze(cfg.freeze_depth)
    train_loader = _loader(data["train"], cfg, shuffle=True, gen=gen)
    val_loader = _loader(data["val"], cfg, shuffle=False, gen=None)
    reg_kwargs: dict[str, Any] = {"alpha": cfg.reg_alpha, "beta": cfg.reg_beta}
    if cfg.reg == "delta":
        eval_train = copy.copy(data["train"])
        eval_train.train = False
        reg_kwargs.update(loader=_loader(eval_train, cfg, shuffle=False, gen=None), num_classes=len(classes),
                          device=cfg.device)
    regularizer = build_regularizer(cfg.reg, model, **reg_kwargs)
    # L2-SP / DELTA replace weight decay (their beta term is the head's L2), as in Li et al. 2018
    weight_decay = 0.0 if regularizer is not None else cfg.weight_decay
    fit_cfg = FitConfig(epochs=cfg.epochs, lr=cfg.lr, backbone_lr_mult=cfg.backbone_lr_mult,
                        weight_decay=weight_decay, optimizer=cfg.optimizer, warmup_epochs=cfg.warmup_epochs,
                        label_smoothing=cfg.label_smoothing, patience=cfg.patience, device=cfg.device)
    hook = None if val_metrics is None else (lambda y, p: val_metrics(y, p, classes))
    fr = fit(model, train_loader, val_loader, fit_cfg, regularizer=regularizer, on_epoch=on_epoch,
             resume_state=resume_state, state_callback=state_callback, val_metrics=hook)
    model.load_state_dict(fr.best_state)  # selected on val only
    final_split = "test" if len(data["test"]) else "val"
    ev = evaluate(model, _loader(data[final_split], cfg, shuffle=False, gen=None), device=cfg.device,
                  num_classes=len(classes), keep_probs=hook is not None)
    extra: dict[str, float] = {}
    if hook is not None:
        best = next((h for h in fr.history if h["epoch"] == fr.best_epoch), {})
        extra = {k: float(v) for k, v in best.items() if k.startswith("val_") and k not in ("val_error", "val_loss")}
        if final_split == "test":
            extra |= {f"test_{k}": float(v) for k, v in hook(ev["labels"], ev["probs"]).items()}
    return FinetuneResult(
        val_error=fr.best_val_error,
        test_error=ev["error"] if final_split == "test" else None,
        per_class_accuracy=dict(zip(classes, ev["per_class_accuracy"])),
        history=fr.history, best_epoch=fr.best_epoch, classes=classes, seed=cfg.seed, n_images=n_images,
        confusion=ev["confusion"], stopped_early=fr.stopped_early,
        model_state=fr.best_state if cfg.keep_state else None, metrics=extra,
    )


def _mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def run_finetune_seeds(cfg: FinetuneConfig | dict[str, Any], seeds: list[int],
                       on_epoch: OnEpoch | None = None) -> FinetuneSummary:
    """run_finetune once per seed (target decoded once); mean ± sample std (ddof=1) of val/test errors."""
    cfg = FinetuneConfig.parse(cfg)
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    model, sides = _init_model(cfg, 2)
    data = load_target(cfg, model.in_channels, sides)
    del model
    results = [run_finetune(cfg.model_copy(update={"seed": s}), on_epoch, data=data) for s in seeds]
    val_mean, val_std = _mean_std([r.val_error for r in results])
    tests = [r.test_error for r in results if r.test_error is not None]
    test_mean, test_std = _mean_std(tests) if len(tests) == len(results) else (None, None)
    per_class = {c: float(np.nanmean([r.per_class_accuracy[c] for r in results]))
                 if not all(math.isnan(r.per_class_accuracy[c]) for r in results) else math.nan
                 for c in results[0].classes}
    return FinetuneSummary(results, val_mean, val_std, test_mean, test_std, per_class)


__all__ = ["FinetuneConfig", "FinetuneResult", "FinetuneSummary", "run_finetune", "run_finetune_seeds",
           "load_target", "seed_everything"]
