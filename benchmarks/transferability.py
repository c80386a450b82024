"""Transferability benchmark: do LogME / LEEP / NCE (and H-score) rank source checkpoints like fine-tuning does?

    .venv/bin/python benchmarks/transferability.py [--workdir /tmp/rtl-bench] [--quick]

Uses the demo family and corpus of benchmarks/selection_precision.py (same cache dir, same sides).
1. Source checkpoints (small_cnn, `subset`/`source` strategy, corpus train+val rows), one per subset:
   every industry's datasets alone (`--domains <industry>`; the 4 target industries only in --quick),
   all datasets, and a random mix of 4 datasets (seeded). Every checkpoint draws the SAME number of
   samples (`samples_per_epoch` x epochs), so they differ in what they saw, not in how long they trained.
2. For every target (family/targets/*) and checkpoint:
   - scores on the target TRAIN split, from one eval-mode forward pass (rtl.select.inference.infer):
     LogME (features), LEEP (softmax over the checkpoint's own source classes), NCE (its arg-max),
     H-score (shrinkage), and `imp_mass` = the importance class mass (Ngiam et al. 2018, T=2, computed
     with the all-data checkpoint) that falls on the checkpoint's datasets;
   - the actual accuracy: `run_finetune` (full fine-tuning, fixed settings, model picked on val), test
     accuracy averaged over the seeds; also the linear-probe test accuracy (`probe=True`) as a second,
     lower-variance reference.
3. Kendall tau (scipy.stats.kendalltau, tau-b) between each score and the actual accuracies over the
   checkpoints, per target, and the mean over targets.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selection_precision import (  # noqa: E402
    DEFAULT_WORKDIR,
    corpus_prior,
    prepare_corpus,
    prepare_family,
    pretrain,
)

SCORE_NAMES = ["logme", "leep", "nce", "hscore", "imp_mass"]


def subsets(corpus: Path, quick: bool, targets: list[str], seed: int) -> dict[str, dict]:
    """name -> pretrain kwargs (datasets / domains) of each candidate checkpoint."""
    from rtl.data.corpus import open_corpus

    man = open_corpus(corpus).manifest
    industries = sorted({c["domain"][0] for c in man["classes"]})
    if quick:  # only the industries a target belongs to
        tgt_ind = {t.removeprefix("target_") for t in targets}
        industries = [i for i in industries if i in tgt_ind]
    out: dict[str, dict] = {"all": {}}
    for ind in industries:
        out[ind] = {"domains": [ind]}
    names = sorted(man["datasets"])
    rng = np.random.default_rng(seed)
    out["mix4"] = {"datasets": sorted(rng.choice(names, size=4, replace=False).tolist())}
    return out


def softmax_masked(logits: np.ndarray, present: np.ndarray) -> np.ndarray:
    z = np.where(present[None, :], logits.astype(np.float64), -np.inf)  # (N, K)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def scores_for(model, meta: dict, data_train, manifest: dict, threads: int) -> dict[str, float]:
    """LogME / LEEP / NCE / H-score of one checkpoint on the (eval-mode) target train split."""
    from rtl.select.inference import infer
    from rtl.select.transferability import h_score, leep, logme, nce

    inf = infer(model, data_train, num_threads=threads)
    own = set(meta.get("datasets") or [])
    present = np.array([c["dataset"] in own for c in manifest["classes"]]) if own else \
        np.ones(inf.logits.shape[1], dtype=bool)
    return {"logme": logme(inf.features, inf.labels), "leep": leep(softmax_masked(inf.logits, present), inf.labels),
            "nce": nce(np.where(present, inf.logits, -np.inf).argmax(axis=1), inf.labels),
            "hscore": h_score(inf.features, inf.labels)}


def kendall(x: list[float], y: list[float]) -> float:
    from scipy.stats import kendalltau

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(kendalltau(x, y).statistic)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--min-side", type=int, default=32)
    ap.add_argument("--max-side", type=int, default=40)
    ap.add_argument("--cap", type=int, default=0)
    ap.add_argument("--max-downscale", type=float, default=16.0, help="corpus: see selection_precision.py")
    ap.add_argument("--epochs", type=int, default=5, help="pretraining epochs per checkpoint")
    ap.add_argument("--samples-per-epoch", type=int, default=1024, help="same pretraining budget for all")
    ap.add_argument("--lr", type=float, default=0.05, help="pretraining lr")
    ap.add_argument("--ft-epochs", type=int, default=12)
    ap.add_argument("--ft-lr", type=float, default=0.01)
    ap.add_argument("--ft-batch", type=int, default=16)
    ap.add_argument("--seeds", default="0,1", help="fine-tuning seeds (accuracy = mean over them)")
    ap.add_argument("--no-probe", action="store_true", help="skip the linear-probe reference accuracy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="pretraining seed (and the random mix)")
    ap.add_argument("--quick", action="store_true",
                    help="6 checkpoints (target industries + all + mix), 3 epochs, 1 seed, 8 ft epochs")
    ap.add_argument("--json", help="default WORKDIR/transferability.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.ft_epochs = min(args.epochs, 3), args.seeds.split(",")[0], min(args.ft_epochs, 8)
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    from rtl.data.corpus import open_corpus
    from rtl.select.importance import class_mass, importance_weights
    from rtl.select.inference import infer
    from rtl.train.checkpoint import load_checkpoint
    from rtl.train.finetune import FinetuneConfig, load_target, run_finetune

    fam = prepare_family(work)
    corpus = prepare_corpus(work, fam, min_side=args.min_side, max_side=args.max_side, cap=args.cap or None,
                            max_downscale=args.max_downscale)
    manifest = open_corpus(corpus).manifest
    prior = corpus_prior(open_corpus(corpus))
    targets = sorted(p for p in (fam / "targets").iterdir() if p.is_dir())

    # 1. checkpoints
    t0 = time.perf_counter()
    ckpts: dict[str, Path] = {}
    tag = f"{corpus.name}-e{args.epochs}-n{args.samples_per_epoch}-lr{args.lr:g}-s{args.seed}"
    for name, kw in subsets(corpus, args.quick, [t.name for t in targets], args.seed).items():
        out = work / "ckpt" / f"tr-{name}-{tag}"
        ckpts[name], sec = pretrain(corpus, out, epochs=args.epochs, lr=args.lr, seed=args.seed,
                                    splits=["train", "val"], samples_per_epoch=args.samples_per_epoch,
                                    threads=args.threads, **kw)
        print(f"[pretrain] {name:<14} {kw or 'all datasets'}  {sec:.1f} s", flush=True)
    t_pre = time.perf_counter() - t0

    # 2. scores and fine-tuning per target
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    sides = (args.min_side, args.max_side)
    for tgt in targets:
        base = FinetuneConfig(target=str(tgt), init=str(ckpts["all"]), epochs=args.ft_epochs, lr=args.ft_lr,
                              batch_size=args.ft_batch)
        data = load_target(base, 3, sides)  # decoded once, reused for every checkpoint and seed
        eval_train = copy.copy(data["train"])
        eval_train.train = False  # scores use centre crops, like `rtl select`
        all_model, _ = load_checkpoint(ckpts["all"])
        logits = infer(all_model, eval_train, num_threads=args.threads).logits
        mass = class_mass(importance_weights(logits, prior, 2.0), prior)  # (K,)
        rows = {}
        for name, ck in ckpts.items():
            model, meta = load_checkpoint(ck)
            s = scores_for(model, meta, eval_train, manifest, args.threads)
            own = set(meta.get("datasets") or [])
            s["imp_mass"] = float(sum(mass[int(c["id"])] for c in manifest["classes"] if c["dataset"] in own))
            cfg = base.model_copy(update={"init": str(ck)})
            ft = [1.0 - run_finetune(cfg.model_copy(update={"seed": sd}), data=data).test_error for sd in seeds]
            probe = None if args.no_probe else 1.0 - run_finetune(cfg.model_copy(update={"probe": True}),
                                                                    data=data).test_error
            rows[name] = {**s, "ft_acc": float(np.mean(ft)), "ft_accs": ft, "probe_acc": probe}
            print(f"[{tgt.name}] {name:<14} " + " ".join(f"{k}={v:.3f}" for k, v in s.items())
                  + f"  ft_acc={np.mean(ft):.3f}" + (f" probe_acc={probe:.3f}" if probe is not None else ""),
                  flush=True)
        results[tgt.name] = {"n": {k: len(v) for k, v in data.items()}, "checkpoints": rows}
    t_eval = time.perf_counter() - t0

    # 3. Kendall tau
    refs = ["ft_acc"] + ([] if args.no_probe else ["probe_acc"])
    taus: dict[str, dict[str, dict[str, float]]] = {r: {} for r in refs}
    for ref in refs:
        print(f"\n## Kendall tau(score, {ref}) over {len(ckpts)} checkpoints")
        print("| target | " + " | ".join(SCORE_NAMES) + " |")
        print("|---|" + "---|" * len(SCORE_NAMES))
        for tname, r in results.items():
            rows = r["checkpoints"]
            acc = [rows[c][ref] for c in ckpts]
            taus[ref][tname] = {s: kendall([rows[c][s] for c in ckpts], acc) for s in SCORE_NAMES}
            print(f"| {tname} | " + " | ".join(f"{taus[ref][tname][s]:+.2f}" for s in SCORE_NAMES) + " |")
        means = {s: float(np.nanmean([taus[ref][t][s] for t in results])) for s in SCORE_NAMES}
        taus[ref]["mean"] = means
        print("| **mean** | " + " | ".join(f"**{means[s]:+.2f}**" for s in SCORE_NAMES) + " |")

    print("\n## per target: scores and accuracies (test accuracy; ft = mean over seeds " + str(seeds) + ")")
    for tname, r in results.items():
        print(f"\n**{tname}** (train/val/test = {r['n']['train']}/{r['n']['val']}/{r['n']['test']})\n")
        print("| checkpoint | " + " | ".join(SCORE_NAMES) + " | ft_acc | probe_acc |")
        print("|---|" + "---|" * (len(SCORE_NAMES) + 2))
        for c, row in sorted(r["checkpoints"].items(), key=lambda kv: -kv[1]["ft_acc"]):
            pa = "" if row["probe_acc"] is None else f"{row['probe_acc']:.3f}"
            print(f"| {c} | " + " | ".join(f"{row[s]:.3f}" for s in SCORE_NAMES) + f" | {row['ft_acc']:.3f} | {pa} |")
    total = time.perf_counter() - t_start
    print(f"\nruntime: total {total:.1f} s (pretraining {len(ckpts)} checkpoints {t_pre:.1f} s, "
          f"scores + {len(targets) * len(ckpts) * len(seeds)} fine-tunes {t_eval:.1f} s)")
    out = Path(args.json or work / "transferability.json")
    out.write_text(json.dumps({"settings": vars(args), "checkpoints": {k: str(v) for k, v in ckpts.items()},
                               "subsets": subsets(corpus, args.quick, [t.name for t in targets], args.seed),
                               "results": results, "kendall_tau": taus,
                               "seconds": {"total": total, "pretrain": t_pre, "eval": t_eval}}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
