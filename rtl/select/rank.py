"""`rtl rank`: rank a target's source units by several signals, with a signed gain and a null verdict.

Per target, for every source unit u (dataset or domain tag) of the corpus:

* **importance** -- u's share of the importance mass (Ngiam et al. 2018) from the generalist's predictions
  on the target's train images (sums to 1 over units: it can rank, never say "none");
* **probe** -- accuracy on the target's val split of a kNN probe on the *expert's* frozen features
  (the generalist continued on u, `rtl.select.experts`), fitted on the target's train split;
* **logme** -- LogME of the expert's features on the target's train labels (You et al. 2021);
* **distance** -- Fréchet distance between the target's and u's pooled *generalist* features (smaller =
  closer), u's images sampled from the corpus;
* **image_stats** -- similarity of cheap low-level statistics (intensity/gradient histograms, spectrum;
  Ge & Yu 2017 use filter banks). When the target is gray, u's images are gray-converted first, so a colour
  scan of the same defects is not sunk by colour alone;
* **gain** -- the *signed* gain of the expert over the generalist itself, per seed the mean of (a) the
  val accuracy of a logistic probe on frozen features fitted on the seed's stratified bootstrap of the
  train split and (b) the val accuracy after one short fine-tune with that seed, expert minus generalist
  (paired by seed), with its noise (`rtl.select.signals.signed_gains`, pooled seed std, 2σ rule). This is the only signal that can
  say "this source hurts" or "no source helps".

The combined ranking is the weighted mean rank over signals (`combine_rankings`); the verdict per source
comes from the gain alone (helps / neutral / hurts) and the target verdict is the helping sources in
combined order, or "no source helps -- use the generalist" (or scratch when scratch beats the
generalist by more than the noise). The generalist and scratch rows are always in the table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtl.artifacts.ranking import RANKING_VERSION, read_ranking, write_ranking
from rtl.data.convention import load_dataset, resolve_image_path
from rtl.data.corpus_view import decode_row, open_corpus
from rtl.data.transforms import DecodeError, decode_image, to_channels
from rtl.errors import RtlError
from rtl.select.experts import build_experts, generalist_info, plan_experts, units_in
from rtl.select.importance import aggregate_mass, class_mass, importance_weights
from rtl.select.inference import infer, target_dataset
from rtl.select.ranking import format_table
from rtl.select.signals import (
    combine_rankings,
    feature_distance,
    image_stats,
    image_stats_similarity,
    probe_score,
    signed_gains,
    target_verdict,
)
from rtl.select.transferability import logme
from rtl.train.checkpoint import load_checkpoint
from rtl.train.corpus_data import CorpusDataset, read_view_table
from rtl.train.finetune import FinetuneConfig, run_finetune
from rtl.train.probe import extract_features

__all__ = ["RankConfig", "rank_target", "format_ranking", "write_ranking", "read_ranking", "SIGNALS"]

# signal -> higher is better
SIGNALS: dict[str, bool] = {"importance": True, "probe": True, "logme": True, "distance": False,
                            "image_stats": True, "gain": True}
# the gain is measured, the others are proxies: it counts double in the combined rank
SIGNAL_WEIGHTS: dict[str, float] = {"importance": 1.0, "probe": 1.0, "logme": 1.0, "distance": 1.0,
                                    "image_stats": 1.0, "gain": 2.0}


@dataclass
class RankConfig:
    target: str
    corpus: str
    generalist: str
    by: str = "datasets"  # source units: datasets | domains
    units: list[str] | None = None  # default: every unit of the corpus
    expert_fraction: float = 0.05  # of the generalist's pretraining images, per expert
    expert_lr_mult: float = 0.3
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    finetune_epochs: int = 3
    finetune_lr: float = 0.01
    temperature: float = 2.0
    source_images: int = 64  # corpus images per unit for distance / image statistics
    batch_size: int = 32
    cache_dir: str | None = None  # default: <corpus parent>/cache (the workspace's pretraining cache)
    workers: int = 1
    use_gpu: bool = False
    min_noise: float = 0.01
    scratch: bool = True

    def __post_init__(self) -> None:
        for name in ("target", "corpus", "generalist"):
            if not Path(getattr(self, name)).exists():
                raise RtlError(f"--{name}: no such path: {getattr(self, name)}")
        if not self.seeds:
            raise RtlError("--seeds: at least one seed")
        if self.finetune_epochs < 1:
            raise RtlError(f"--finetune-epochs must be >= 1, got {self.finetune_epochs}")
        if self.source_images < 2:
            raise RtlError(f"--source-images must be >= 2, got {self.source_images}")


def _view(corpus: str, by: str, units: Sequence[str] | None) -> Any:
    if units is None:
        return open_corpus(corpus)
    return open_corpus(corpus, datasets=list(units)) if by == "datasets" else open_corpus(corpus, domains=list(units))


def _source_table(corpus: str, by: str, unit: str, n: int, seed: int) -> Any:
    """Up to `n` corpus rows of one unit (deterministic sample), pixel columns only."""
    table = read_view_table(_view(corpus, by, [unit]))
    if table.num_rows > n:
        idx = np.sort(np.random.default_rng([seed, table.num_rows]).choice(table.num_rows, n, replace=False))
        table = table.take(idx)
    return table


def _images(table: Any) -> list[np.ndarray]:
    cols = table.to_pydict()
    return [decode_row(p, h, w, c) for p, h, w, c in zip(cols["pixels"], cols["height"], cols["width"],
                                                         cols["channels"])]


def _target_images(info: Any, split: str) -> list[np.ndarray]:
    """Raw decoded target images (their own channels): the image statistics need to know a gray target is
    gray, which the model-ready TargetDataset (converted to the model's channels) no longer says."""
    out = []
    for r in info.split(split):
        try:
            out.append(decode_image(resolve_image_path(info.root, r.path)))
        except (DecodeError, OSError, RtlError):
            continue
    return out


def _features(model: Any, data: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    return extract_features(model, data, batch_size=batch_size)


def _short_finetunes(cfg: RankConfig, init: str, backbone: str, sides: tuple[int, int]) -> list[float]:
    """Target val accuracy after one short fine-tune per seed from `init` (checkpoint dir or "scratch")."""
    out = []
    for s in cfg.seeds:
        ft = FinetuneConfig(target=cfg.target, init=init, model=backbone, lr=cfg.finetune_lr, epochs=cfg.finetune_epochs,
                            seed=int(s), batch_size=cfg.batch_size, min_side=sides[0], max_side=sides[1],
                            device="cuda" if cfg.use_gpu else "cpu")
        out.append(1.0 - float(run_finetune(ft).val_error))
    return out


def _bootstrap(y: np.ndarray, seed: int) -> np.ndarray:
    """Stratified bootstrap of the target's train indices (every class keeps its count): the seed's draw of
    a small target train set, so the probe's gain carries the noise of the target's sample."""
    rng = np.random.default_rng([seed, len(y)])
    return np.concatenate([rng.choice(np.flatnonzero(y == c), int((y == c).sum()), replace=True)
                           for c in np.unique(y)])


def _probe_accs(x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray,
                seeds: Sequence[int]) -> list[float]:
    return [probe_score(x_tr[i], y_tr[i], x_va, y_va, kind="logreg") for i in (_bootstrap(y_tr, s) for s in seeds)]


def rank_target(cfg: RankConfig, *, log: Any = print) -> dict[str, Any]:
    """The ranking of one target (a JSON-able dict; see `write_ranking`)."""
    t0 = time.perf_counter()
    gen = generalist_info(cfg.generalist)
    full = _view(cfg.corpus, cfg.by, None)
    if gen.meta.get("corpus_version") != full.version:
        raise RtlError(f"--generalist: {cfg.generalist} was trained on corpus version "
                       f"{gen.meta.get('corpus_version')}, not {full.version} ({cfg.corpus}): retrain it or "
                       f"pass the corpus it was trained on")
    have = units_in(full.manifest, cfg.by)
    units = list(cfg.units) if cfg.units else have
    bad = [u for u in units if u not in have]
    if bad:
        raise RtlError(f"--units: {bad[0]!r} is not a {cfg.by[:-1]} of {cfg.corpus}; valid: {', '.join(have)}")
    info = load_dataset(cfg.target)
    classes = info.classes()
    if len(classes) < 2:
        raise RtlError(f"--target: {cfg.target} has {len(classes)} class(es); ranking needs at least 2")
    for split in ("train", "val"):
        if not info.split(split):
            raise RtlError(f"--target: {cfg.target} has no {split} split (ImageSets/Main/{split}.txt)")
    gmodel, gmeta = load_checkpoint(cfg.generalist)
    in_ch = int(getattr(gmodel, "in_channels", 3))
    sides = (int(gmeta.get("min_side") or full.manifest["params"]["min_side"]),
             int(gmeta.get("max_side") or full.manifest["params"]["max_side"]))
    backbone = str(gmeta.get("model"))
    torch.manual_seed(0)

    cache_dir = cfg.cache_dir or str(Path(cfg.corpus).resolve().parent / "cache")
    plans = plan_experts(gen, units, by=cfg.by, fraction=cfg.expert_fraction, lr_mult=cfg.expert_lr_mult)
    built: list[str] = []

    def _on(plan: Any, ckpt: Path, was_built: bool) -> None:
        if was_built:
            built.append(plan.unit)
        log(f"  expert {plan.unit}: {'built' if was_built else 'cached'} ({plan.images} images)")

    log(f"[{info.name}] {len(units)} experts at {cfg.expert_fraction:.0%} of the generalist's "
        f"{gen.images} images each")
    experts = build_experts(gen, str(Path(cfg.corpus).resolve()), plans, cache_dir=cache_dir, by=cfg.by,
                            lr_mult=cfg.expert_lr_mult, workers=cfg.workers, use_gpu=cfg.use_gpu,
                            on_expert=_on)

    # ---- target data (eval crops, the generalist's sides and channels)
    train, _ = target_dataset(cfg.target, "train", in_channels=in_ch, sides=sides)
    val, _ = target_dataset(cfg.target, "val", in_channels=in_ch, sides=sides)
    gx_tr, y_tr = _features(gmodel, train, cfg.batch_size)
    gx_va, y_va = _features(gmodel, val, cfg.batch_size)

    # ---- importance mass from the generalist's predictions on the target (Ngiam et al. 2018)
    logits = infer(gmodel, train, batch_size=cfg.batch_size).logits  # (N, K)
    prior = np.zeros(full.num_classes)
    for k, n in full.class_counts().items():
        prior[int(k)] = n
    w = importance_weights(logits, prior, cfg.temperature)
    by_ds, by_dom = aggregate_mass(class_mass(w, prior), full.manifest["classes"])
    mass = by_ds if cfg.by == "datasets" else by_dom

    # ---- low-level statistics: gray target -> gray-converted sources (imaging shift is not a mismatch)
    timgs = _target_images(info, "train")
    gray = bool(timgs) and all(im.shape[2] == 1 for im in timgs)
    tdesc = image_stats(timgs, gray=gray) if timgs else None

    rows: dict[str, dict[str, Any]] = {}
    probe_accs: dict[str, list[float]] = {}
    for u in units:
        table = _source_table(cfg.corpus, cfg.by, u, cfg.source_images, seed=0)
        src = CorpusDataset(table, crop=sides[0], in_channels=in_ch, train=False)
        sx, _ = _features(gmodel, src, cfg.batch_size)
        simgs = _images(table)
        if gray:
            simgs = [to_channels(im, 1) for im in simgs]
        emodel, _ = load_checkpoint(experts[u])
        ex_tr, _ = _features(emodel, train, cfg.batch_size)
        ex_va, _ = _features(emodel, val, cfg.batch_size)
        probe_accs[u] = _probe_accs(ex_tr, y_tr, ex_va, y_va, cfg.seeds)
        rows[u] = {
            "unit": u,
            "importance": float(mass.get(u, 0.0)),
            "probe": probe_score(ex_tr, y_tr, ex_va, y_va, kind="knn"),
            "logme": float(logme(ex_tr, y_tr)),
            "distance": feature_distance(gx_tr, sx) if len(sx) >= 2 else math.nan,
            "image_stats": image_stats_similarity(tdesc, image_stats(simgs, gray=gray))
            if tdesc is not None and simgs else math.nan,
            "expert": str(experts[u]),
        }
    log(f"[{info.name}] short fine-tunes: {len(units) + 1 + int(cfg.scratch)} inits x {len(cfg.seeds)} seeds")
    base = _short_finetunes(cfg, cfg.generalist, backbone, sides)
    expert_acc = {u: _short_finetunes(cfg, str(experts[u]), backbone, sides) for u in units}
    scratch = _short_finetunes(cfg, "scratch", backbone, sides) if cfg.scratch else None
    base_probe = _probe_accs(gx_tr, y_tr, gx_va, y_va, cfg.seeds)
    # per seed: the mean of the probe gain (frozen features, the seed's bootstrap of the train set) and the
    # short fine-tune gain (the seed's init/order). On tiny targets a few fine-tune epochs often stay at
    # chance for every init; the probe still separates features, and the fine-tune keeps it honest.
    both = {u: [(p + f) / 2 for p, f in zip(probe_accs[u], expert_acc[u])] for u in units}
    base_both = [(p + f) / 2 for p, f in zip(base_probe, base)]
    # noise floor: one val image's worth of accuracy -- a smaller gain cannot be told from chance
    floor = max(cfg.min_noise, 1.0 / len(y_va))
    gains = signed_gains(both, base_both, min_noise=floor, pooled=len(cfg.seeds) > 1)
    for u in units:
        g = gains[u]
        rows[u].update(gain=g.mean, gain_std=g.std, noise=g.noise, verdict=g.verdict,
                       gain_probe=float(np.mean(probe_accs[u]) - np.mean(base_probe)),
                       gain_finetune=float(np.mean(expert_acc[u]) - np.mean(base)),
                       finetune_acc=float(np.mean(expert_acc[u])), finetune_accs=list(expert_acc[u]))
    signals = {s: {u: rows[u][s] for u in units} for s in SIGNALS}
    combined = combine_rankings(signals, higher_is_better=SIGNALS, weights=SIGNAL_WEIGHTS)
    order = [u for u, _ in combined]
    for rank, (u, score) in enumerate(combined, 1):
        rows[u].update(rank=rank, combined=score)
    helping, message = target_verdict(gains)
    suggested = [u for u in order if u in helping]
    gen_row = {"probe": probe_score(gx_tr, y_tr, gx_va, y_va, kind="knn"), "logme": float(logme(gx_tr, y_tr)),
               "finetune_acc": float(np.mean(base)), "finetune_accs": base}
    recommend = "subset" if suggested else "generalist"
    if scratch is not None:
        noise = max(float(np.std(np.asarray(scratch) - np.asarray(base), ddof=1)) if len(base) > 1 else 0.0,
                    floor)
        if not suggested and np.mean(scratch) - np.mean(base) > 2 * noise:
            recommend, message = "scratch", "no source helps -- scratch beats the generalist"
    expert_images = sum(p.images for p in plans)
    return {
        "version": RANKING_VERSION, "target": info.name, "target_path": str(Path(cfg.target).resolve()),
        "corpus": str(Path(cfg.corpus).resolve()), "corpus_version": full.version,
        "generalist": gen.path, "generalist_digest": gen.digest, "by": cfg.by, "seeds": list(cfg.seeds),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("target", "corpus", "generalist")},
        "rows": [rows[u] for u in order],
        "generalist_row": gen_row,
        "scratch_row": {"finetune_acc": float(np.mean(scratch)), "finetune_accs": scratch} if scratch else None,
        "order": order, "suggested": suggested, "verdict": message, "recommend": recommend,
        "cost": {"expert_images": expert_images, "generalist_images": gen.images,
                 "experts_vs_generalist": expert_images / gen.images, "experts_built": built,
                 "seconds": time.perf_counter() - t0},
    }


def format_ranking(r: dict[str, Any]) -> str:
    def f(v: Any, nd: int = 3) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"

    head = ["rank", r["by"][:-1], "importance", "probe", "logme", "distance", "img-stats", "gain ± std",
            "verdict"]
    rows = [[x["rank"], x["unit"], f(x["importance"]), f(x["probe"]), f(x["logme"]), f(x["distance"]),
             f(x["image_stats"]), f"{x['gain']:+.3f} ± {x['gain_std']:.3f}", x["verdict"]] for x in r["rows"]]
    g = r["generalist_row"]
    rows.append(["-", "(generalist)", "-", f(g["probe"]), f(g["logme"]), "-", "-",
                 f"acc {g['finetune_acc']:.3f}", "baseline"])
    if r.get("scratch_row"):
        s = r["scratch_row"]
        rows.append(["-", "(scratch)", "-", "-", "-", "-", "-",
                     f"{s['finetune_acc'] - g['finetune_acc']:+.3f}", "reference"])
    c = r["cost"]
    tail = [f"verdict: {r['verdict']}" + (f" -> suggested subset: {', '.join(r['suggested'])}" if r["suggested"]
                                          else ""),
            f"cost: experts {c['expert_images']} images = {c['experts_vs_generalist']:.2f} x the generalist's "
            f"{c['generalist_images']}; {len(c['experts_built'])} built, "
            f"{len(r['rows']) - len(c['experts_built'])} cached; {c['seconds']:.0f} s"]
    return f"target {r['target']}\n" + format_table(rows, head) + "\n" + "\n".join(tail)
