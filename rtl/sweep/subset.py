"""Ranked-space pretraining: the generalist, its continuation on a subset in rungs, and the rung score.

Why continue the generalist instead of pretraining each subset from scratch: a subset model then costs
`budget.subset_fraction` of one generalist (Puigcerver et al. 2021 specialise the same way), and every
subset gets the same number of images whatever its size (`equal compute per subset`: a bigger mask is
never favoured by more steps). The continuation is cut into rungs (`budget.rungs`, fractions of the
subset budget, e.g. 1/9, 1/3, 1): rung r continues rung r-1's checkpoint, each rung is its own entry
in the content-addressed cache, and after each rung the trial reports a cheap target score -- the
val error of a logistic probe on the frozen features, fitted on the target's train split -- so
successive halving (BOHB-style, Falkner et al. 2018, arXiv 1807.01774) stops weak subsets before they
are paid in full and before any fine-tuning. Fixed inits (scratch, ImageNet, the generalist itself)
report their own probe at every rung: they cost nothing to "pretrain" and anchor the rung cut-offs.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rtl.artifacts.cache import PretrainCache, cache_key
from rtl.artifacts.checkpoint import read_checkpoint_meta, weights_sha
from rtl.sweep.spec import SweepSpec


def generalist(spec: SweepSpec, units: list[str]) -> tuple[Path, str]:
    """(checkpoint dir, cache key) of the generalist: every searchable unit, the spec's pretraining
    schedule, the spec's first seed. The same key as a bit-space trial with every unit on (shared)."""
    from rtl.sweep.trial import _pretrain, _schedule
    from rtl.train.strategies import open_view

    cache = PretrainCache(spec.cache_dir())
    seed, version = int(spec.seeds[0]), open_view(spec.corpus_path()).version
    key = cache_key(corpus_version=version, mask=list(units), temperature=None, backbone=spec.backbone,
                    schedule=_schedule(spec), seed=seed)
    runs = Path(spec.cache_dir()) / "runs"
    d = cache.get_or_create(key, lambda tmp: _pretrain(spec, tmp / "ckpt", runs, seed, "subset", list(units)))
    return d / "ckpt", key


def rung_images(spec: SweepSpec, gen_meta: dict) -> list[int]:
    """Cumulative images consumed by the end of each rung (the subset budget x the rung fractions)."""
    gen_images = sum(int(h.get("images", 0)) for h in gen_meta.get("history", []))
    total = max(spec.budget.batch_size, int(round(spec.budget.subset_fraction * gen_images)))
    return [max(spec.budget.batch_size, int(round(f * total))) for f in spec.budget.rungs]


def fidelities(spec: SweepSpec) -> list[int]:
    """Tune's time attribute per rung, in units of the first rung's budget (1, 3, 9 for 1/9, 1/3, 1), so
    ASHA's geometric milestones land on the rungs; the fine-tune's final report is the last + 1."""
    first = spec.budget.rungs[0]
    return [max(1, int(round(f / first))) for f in spec.budget.rungs]


def rung_checkpoints(spec: SweepSpec, gen_ckpt: Path, mask: list[str], seed: int,
                     weights: bytes | None = None) -> Iterator[tuple[Path, str]]:
    """(checkpoint, key) of the generalist continued on `mask` through each rung in turn, each built on the
    previous one; class-weighted when `weights` (a weights.json document's bytes) is given. Lazy: a trial stopped after
    rung r never builds rung r+1. The generalist's weights and meta are read once per subset."""
    from rtl.sweep.trial import _view_args
    from rtl.train.pretrain import PretrainConfig, pretrain_local, run_pretrain

    meta = read_checkpoint_meta(gen_ckpt).as_dict()
    images = rung_images(spec, meta)
    lr = float((meta.get("config") or {}).get("lr", 0.1)) * 0.3  # continued pretraining: a lower lr
    gen_digest = weights_sha(gen_ckpt)
    weights_digest = hashlib.sha256(weights).hexdigest()[:16] if weights else None
    cache, r, prev = PretrainCache(spec.cache_dir()), spec.resources, gen_ckpt
    for rung in range(len(images)):
        payload = {"continue": gen_digest, "mask": sorted(mask), "seed": int(seed), "images": images[:rung + 1],
                   "weights": weights_digest, "batch_size": spec.budget.batch_size,
                   "sides": [spec.image.min_side, spec.image.max_side]}
        key = "rung-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:40]

        def build(tmp: Path, rung: int = rung, prev: Path = prev) -> None:
            if weights is not None:
                (tmp / "weights.json").write_bytes(weights)
            cfg = PretrainConfig(
                corpus=spec.corpus_path(), strategy="weighted" if weights else "subset", model=spec.backbone,
                out=str(tmp / "ckpt"), epochs=1, samples_per_epoch=images[rung] - (images[rung - 1] if rung else 0),
                batch_size=spec.budget.batch_size * r.train_workers, lr=lr, warmup_epochs=0.0,
                workers=r.train_workers, cpus_per_worker=max(1, int(r.cpus)), use_gpu=r.gpus > 0, seed=seed + rung,
                class_weights=str(tmp / "weights.json") if weights else None, init_checkpoint=str(prev),
                storage_path=str(Path(spec.cache_dir()) / "runs"), min_side=spec.image.min_side,
                max_side=spec.image.max_side, **_view_args(spec, mask))
            (run_pretrain if r.train_workers > 1 else pretrain_local)(cfg)

        prev = cache.get_or_create(key, build) / "ckpt"
        yield prev, key


@functools.lru_cache(maxsize=4)
def _target_splits(target: str, channels: int, sides: tuple[int, int]) -> tuple[Any, Any]:
    """The target's train and val eval datasets (decoded once per process, not once per rung)."""
    from rtl.select.inference import target_dataset

    return (target_dataset(target, "train", in_channels=channels, sides=sides)[0],
            target_dataset(target, "val", in_channels=channels, sides=sides)[0])


def probe_error(init: str, spec: SweepSpec, target: str, seed: int) -> float:
    """Target val error of a logistic probe on the frozen features of `init` (a checkpoint dir, or
    "scratch" / "imagenet"), fitted on the target's train split: the rung score."""
    import torch

    from rtl.models.backbones import create_model
    from rtl.select.signals import probe_score
    from rtl.train.checkpoint import load_checkpoint
    from rtl.train.probe import extract_features

    if init in ("scratch", "imagenet"):
        from rtl.data.convention import load_dataset

        torch.manual_seed(seed)
        model = create_model(spec.backbone, len(load_dataset(target).classes()),
                             weights="imagenet" if init == "imagenet" else None)
    else:
        model, _ = load_checkpoint(init)
    sides = (spec.image.min_side, spec.image.max_side)
    ch = int(getattr(model, "in_channels", 3))
    tr, va = _target_splits(target, ch, sides)
    x_tr, y_tr = extract_features(model, tr, batch_size=spec.budget.batch_size)
    x_va, y_va = extract_features(model, va, batch_size=spec.budget.batch_size)
    return 1.0 - probe_score(x_tr, y_tr, x_va, y_va, kind="logreg")
