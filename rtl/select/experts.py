"""Subset experts: the generalist continued on one source unit for a small step budget.

Puigcerver et al. 2021 ("Scalable transfer learning with expert models", arXiv 2009.13239) train one
generalist on everything, then cheaply specialise it per data slice; which expert transfers best to a
downstream task is a strong, cheap signal of which slice is related. Here a *unit* is a source dataset (or a
domain tag), an expert is `fraction` (default 5 %) of the generalist's pretraining images spent on that
unit alone, warm-started from the generalist checkpoint, so 20 experts together cost about one generalist.

Experts live in the workspace's content-addressed pretraining cache (`rtl.sweep.cache.PretrainCache`):
the key hashes the generalist's weights, the unit, the image budget, the seed and the schedule, so a
second `rtl rank` (or a sweep) builds nothing, and two concurrent builders wait on one lock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtl.artifacts.cache import PretrainCache  # the shared content-addressed cache (one lock per key)
from rtl.artifacts.checkpoint import META_FILE, MODEL_FILE, has_weights, read_checkpoint_meta, weights_sha
from rtl.errors import RtlError
from rtl.train.pretrain import PretrainConfig, pretrain_local, run_pretrain

__all__ = ["ExpertPlan", "GeneralistInfo", "generalist_info", "plan_experts", "build_experts", "units_in"]


@dataclass(frozen=True)
class GeneralistInfo:
    path: str
    meta: dict[str, Any]
    digest: str  # sha256 (16 hex) of model.pt: what the experts are keyed on
    images: int  # pretraining images the generalist consumed (sum over its epochs)
    batch_size: int
    lr: float


def generalist_info(path: str | Path) -> GeneralistInfo:
    """Read a generalist checkpoint's meta and budget; RtlError (one line) when it is not one."""
    p = Path(path)
    if not has_weights(p):
        raise RtlError(f"--generalist: no rtl checkpoint at {path} ({MODEL_FILE} + {META_FILE})")
    try:
        meta = read_checkpoint_meta(p).as_dict()
    except RtlError as e:
        raise RtlError(f"--generalist: {e}") from None
    cfg = meta.get("config") or {}
    history = meta.get("history") or []
    images = int(sum(int(h.get("images", 0)) for h in history))
    if images <= 0:
        raise RtlError(f"--generalist: {path} was never trained on a corpus (strategy "
                       f"{meta.get('strategy')!r}); pass a `source` / `subset` pretraining")
    digest = weights_sha(p)
    return GeneralistInfo(str(p.resolve()), meta, digest, images, int(cfg.get("batch_size", 64)),
                          float(cfg.get("lr", 0.1)))


def units_in(manifest: dict[str, Any], by: str) -> list[str]:
    """Source units of a corpus: dataset names (by="datasets") or domain tags (by="domains")."""
    if by == "datasets":
        return sorted(manifest["datasets"])
    if by == "domains":
        return sorted({d for v in manifest["datasets"].values() for d in v.get("domain", [])})
    raise RtlError(f"unit kind must be 'datasets' or 'domains', got {by!r}")


@dataclass(frozen=True)
class ExpertPlan:
    unit: str
    key: str
    images: int  # images this expert consumes (= its cost)
    seed: int


def plan_experts(gen: GeneralistInfo, units: Sequence[str], *, by: str = "datasets", fraction: float = 0.05,
                 seed: int = 0, lr_mult: float = 0.3) -> list[ExpertPlan]:
    """One plan per unit; the key = generalist weights + unit + image budget + seed + schedule."""
    if not 0 < fraction <= 1:
        raise RtlError(f"expert fraction must be in (0, 1], got {fraction}")
    images = max(gen.batch_size, int(round(fraction * gen.images)))
    out = []
    for u in units:
        payload = {"expert_of": gen.digest, "unit": u, "by": by, "images": images, "seed": int(seed),
                   "batch_size": gen.batch_size, "lr": gen.lr * lr_mult, "model": gen.meta.get("model"),
                   "sides": [gen.meta.get("min_side"), gen.meta.get("max_side")]}
        key = "expert-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:40]
        out.append(ExpertPlan(u, key, images, int(seed)))
    return out


def _train_expert(gen: GeneralistInfo, corpus: str, plan: ExpertPlan, out: Path, *, by: str, lr_mult: float,
                  workers: int, use_gpu: bool, cpus_per_worker: int) -> None:
    view = {"datasets": [plan.unit]} if by == "datasets" else {"domains": [plan.unit]}
    cfg = PretrainConfig(corpus=corpus, strategy="subset", model=str(gen.meta.get("model")), out=str(out / "ckpt"),
                         epochs=1, samples_per_epoch=plan.images, batch_size=gen.batch_size,
                         lr=gen.lr * lr_mult, warmup_epochs=0.1, workers=workers, use_gpu=use_gpu,
                         cpus_per_worker=cpus_per_worker, seed=plan.seed, init_checkpoint=gen.path,
                         in_channels=int(gen.meta.get("in_channels", 3)),
                         min_side=gen.meta.get("min_side"), max_side=gen.meta.get("max_side"),
                         storage_path=str(out.parent.parent / "runs"), **view)
    # Ray Train (TorchTrainer, DDP) when several workers or a GPU are asked for; one CPU worker trains
    # in-process: a 5 % expert on CPU is seconds of work, less than a Ray Train start
    (run_pretrain if workers > 1 or use_gpu else pretrain_local)(cfg)
    (out / "expert.json").write_text(json.dumps({"unit": plan.unit, "by": by, "images": plan.images,
                                                 "seed": plan.seed, "generalist": gen.path,
                                                 "generalist_digest": gen.digest}, indent=1))


def build_experts(gen: GeneralistInfo, corpus: str, plans: Sequence[ExpertPlan], *, cache_dir: str,
                  by: str = "datasets", lr_mult: float = 0.3, workers: int = 1, use_gpu: bool = False,
                  cpus_per_worker: int = 1, on_expert: Callable[[ExpertPlan, Path, bool], None] | None = None
                  ) -> dict[str, Path]:
    """unit -> expert checkpoint dir, built once per key in the pretraining cache.
    `on_expert(plan, ckpt, built)` is called for each (built=False when it came from the cache)."""
    cache = PretrainCache(cache_dir)
    out: dict[str, Path] = {}
    for plan in plans:
        built = not cache.contains(plan.key)
        d = cache.get_or_create(plan.key, lambda tmp, p=plan: _train_expert(
            gen, corpus, p, tmp, by=by, lr_mult=lr_mult, workers=workers, use_gpu=use_gpu,
            cpus_per_worker=cpus_per_worker))
        out[plan.unit] = d / "ckpt"
        if on_expert is not None:
            on_expert(plan, d / "ckpt", built)
    return out
