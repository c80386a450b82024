"""Pretraining strategies: what a pretrained checkpoint starts from and what it is trained on.

| name | init | trained on |
|---|---|---|
| scratch | random | nothing (the random init, so fine-tuning "from scratch" starts from a checkpoint) |
| imagenet | torchvision ImageNet weights (local only) | nothing |
| source | random | the whole corpus (or the --datasets/--domain view) |
| imagenet_then_source | ImageNet | the corpus (view) |
| joint | random | the corpus (view) + an extra class-per-folder set, its classes appended |
| subset | random | a sub-corpus chosen by --datasets / --domain (required) |
| weighted | random | the corpus (view) drawn class-weighted by a weights.json (Ngiam et al. 2018) |

`plan_pretrain` resolves a strategy against the corpus on the driver, so every user error (unknown
dataset, stale weights file, missing joint folder) is an RtlError before any Ray worker starts. The
plan is plain JSON so it can be hashed (run name) and shipped to the workers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtl.artifacts.checkpoint import MODEL_FILE, weights_sha
from rtl.artifacts.weights import read_weights  # the one reader of weights.json
from rtl.errors import RtlError
from rtl.registry import Registry


@dataclass(frozen=True)
class Strategy:
    name: str
    init: str | None  # None (random) | "imagenet"
    trains: bool  # False: the checkpoint is the initialisation itself
    weighted: bool = False
    joint: bool = False
    needs_subset: bool = False


STRATEGIES: Registry[Strategy] = Registry("strategy")
for _s in (
    Strategy("scratch", None, trains=False),
    Strategy("imagenet", "imagenet", trains=False),
    Strategy("source", None, trains=True),
    Strategy("imagenet_then_source", "imagenet", trains=True),
    Strategy("joint", None, trains=True, joint=True),
    Strategy("subset", None, trains=True, needs_subset=True),
    Strategy("weighted", None, trains=True, weighted=True),
):
    STRATEGIES.register(_s.name)(_s)


def open_view(corpus: str | Path, datasets: list[str] | None = None, domains: list[str] | None = None,
              splits: list[str] | None = None) -> Any:
    """`rtl.data.corpus.open_corpus` (CONTRACTS.md "Corpus on disk")."""
    from rtl.data.corpus import open_corpus  # local: keeps pyarrow out of rtl --help

    return open_corpus(corpus, datasets=datasets, domains=domains, splits=splits)


def load_class_weights(path: str | Path, view: Any) -> dict[int, float]:
    """Read a weights.json (CONTRACTS.md "Selection") for `view` -> {class_id: sampling mass}.

    The sampler makes CLASS frequencies proportional to what this returns, so it reads `class_mass`
    (= w(y)·P_s(y), the target-matched class frequency of Ngiam et al. 2018) and falls back to `weight`
    only for hand-written files that have no `class_mass`. Reading the per-example weight w(y) here would
    divide by the source prior twice and over-sample rare source classes.

    Classes outside the view (e.g. weights computed on the full corpus, pretraining on a subset) are
    dropped and the rest renormalised by the sampler, with a notice of how much mass was dropped.
    Raises RtlError for an unreadable/malformed file, a corpus_version other than the corpus', unknown
    class ids, or no positive mass left in the view.
    """
    path = Path(path)
    if not path.exists():
        raise RtlError(f"class weights file {path} not found")
    doc = read_weights(path)  # malformed / repeated class ids / negative values: one-line RtlError
    if doc.corpus_version != view.version:
        raise RtlError(f"{path}: corpus_version {doc.corpus_version!r} does not match the corpus "
                       f"version {view.version!r}; recompute the weights for this corpus")
    weights: dict[int, float] = {}
    for c in doc.classes:  # raw values (validated above): class_mass, else weight for hand-written files
        cid, w = int(c["id"]), float(c["class_mass"] if "class_mass" in c else c["weight"])
        if not 0 <= cid < view.num_classes:
            raise RtlError(f"{path}: class id {cid} outside the corpus class table (0..{view.num_classes - 1})")
        weights[cid] = w
    if not any(w > 0 for w in weights.values()):
        raise RtlError(f"{path}: every class weight is zero")
    counts = view.class_counts()
    outside = sorted(k for k, w in weights.items() if w > 0 and counts.get(k, 0) == 0)
    if outside:
        total = sum(weights.values())
        dropped = sum(weights[k] for k in outside)
        if dropped >= total:
            raise RtlError(f"{path}: no class with positive weight has examples in this corpus view; "
                           "compute the weights on the same datasets/domains you pretrain on")
        print(f"rtl: note: {path}: {len(outside)} weighted classes are outside this corpus view; "
              f"their {dropped / total:.1%} of the mass is dropped and the rest renormalised", flush=True)
        for k in outside:
            weights[k] = 0.0
    return weights


def plan_pretrain(cfg: Any) -> dict[str, Any]:
    """Resolve `cfg` (a PretrainConfig) into a JSON-able plan; all validation happens here."""
    strat = STRATEGIES.get(cfg.strategy)
    plan: dict[str, Any] = {"strategy": strat.name, "init": strat.init, "trains": strat.trains,
                            "class_weights": None, "joint_classes": [], "datasets": [], "corpus_version": None}
    if strat.needs_subset and not (cfg.datasets or cfg.domains):
        raise RtlError("strategy 'subset' needs --datasets or --domain")
    if strat.weighted and not cfg.class_weights:
        raise RtlError("strategy 'weighted' needs --class-weights weights.json")
    if cfg.class_weights and not strat.weighted:
        raise RtlError(f"--class-weights is only used by strategy 'weighted', not {strat.name!r}")
    if strat.joint and not cfg.joint_dir:
        raise RtlError("strategy 'joint' needs --joint-dir DIR (one sub-folder per class)")
    if cfg.joint_dir and not strat.joint:
        raise RtlError(f"--joint-dir is only used by strategy 'joint', not {strat.name!r}")
    init_ckpt = getattr(cfg, "init_checkpoint", None)
    if init_ckpt:
        if not strat.trains:
            raise RtlError(f"init_checkpoint: strategy {strat.name!r} does not train")
        if not (Path(init_ckpt) / MODEL_FILE).is_file():
            raise RtlError(f"init_checkpoint: no rtl checkpoint at {init_ckpt} ({MODEL_FILE} missing)")
        plan["init"] = str(init_ckpt)
        plan["init_sha"] = weights_sha(init_ckpt)
    if cfg.corpus is None:
        if strat.trains:
            raise RtlError(f"strategy {strat.name!r} needs --corpus")
        plan.update(num_classes=1000, class_table=[], min_side=None, max_side=None, num_rows=0)
        return plan
    view = open_view(cfg.corpus, cfg.datasets, cfg.domains, cfg.splits)
    params = view.manifest.get("params", {})
    min_side = int(cfg.min_side or params.get("min_side") or 0)
    max_side = int(cfg.max_side or params.get("max_side") or min_side)
    if min_side <= 0:
        raise RtlError(f"corpus {cfg.corpus}: manifest params lack min_side; pass min_side explicitly")
    plan.update(corpus_version=view.version, datasets=list(view.datasets), num_classes=view.num_classes,
                class_table=list(view.manifest["classes"]), min_side=min_side, max_side=max_side)
    if not strat.trains:
        plan["num_rows"] = 0
        return plan
    num_rows = len(view)
    if num_rows == 0:
        raise RtlError(f"corpus {cfg.corpus}: the selected view ({', '.join(view.datasets) or 'no datasets'}) "
                       f"has no rows")
    if strat.weighted:
        plan["class_weights"] = {str(k): v for k, v in sorted(load_class_weights(cfg.class_weights, view).items())}
        plan["weights_sha"] = hashlib.sha256(Path(cfg.class_weights).read_bytes()).hexdigest()[:16]
    if strat.joint:
        from rtl.train.corpus_data import load_joint_dir  # local: keeps torch out of rtl --help

        table, classes = load_joint_dir(cfg.joint_dir, first_class_id=view.num_classes, min_side=min_side,
                                        max_side=max_side)
        plan["joint_classes"] = classes
        plan["class_table"] = plan["class_table"] + classes
        plan["num_classes"] = view.num_classes + len(classes)
        num_rows += table.num_rows
    plan["num_rows"] = num_rows
    return plan


def run_name(cfg: Any, plan: dict[str, Any]) -> str:
    """Stable Ray run name: a hash of everything that determines the training trajectory (resources —
    workers, GPU — excluded: the global batch and sample order do not depend on them). `epochs` is part
    of it because the cosine schedule is: re-running with more epochs must be a clean N-epoch run, not a
    warm restart of a finished one (measured in docs/measurements/training.md). Re-running the SAME
    config resumes an interrupted run from its last checkpoint."""
    key = {k: getattr(cfg, k) for k in ("corpus", "strategy", "model", "epochs", "batch_size", "lr", "weight_decay",
                                        "momentum", "warmup_epochs", "seed", "samples_per_epoch", "in_channels",
                                        "datasets", "domains", "splits", "joint_dir")}
    key["corpus"] = str(Path(key["corpus"]).resolve()) if key["corpus"] else None
    if plan.get("init_sha"):  # only when set: run names of cold starts stay what they were
        key["init"] = plan["init_sha"]
    key.update(corpus_version=plan["corpus_version"], weights=plan.get("weights_sha"),
               min_side=plan["min_side"], max_side=plan["max_side"])
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"pretrain-{cfg.strategy}-{cfg.model.replace('/', '_')}-{digest}"
