"""Do early pretraining rungs predict the final outcome? Kendall tau between rungs, and rung vs fine-tune.

Successive halving over continued-pretraining rungs (the `rungs` scheduler) is only worth its savings if a
subset's probe score after 1/9 or 1/3 of its budget ranks subsets like the full budget does, and like the
fine-tuned val error the search optimises. For each target and each of `--subsets` source subsets (the
top-1..3 of the target's ranking, all sources, and random subsets of 1-4 sources; seeded), this script
continues the generalist through every rung (`rtl.sweep.subset.rung_checkpoints`, same cache and budgets
as a sweep), records the probe error at each rung, then fine-tunes from the last rung with each seed
(`--seeds`, the demo spec's fine-tune settings) and takes the mean val error. Prints, per target and
pooled, Kendall tau(rung r, last rung) and tau(rung r, fine-tuned val error).

    python benchmarks/rung_fidelity.py [--family demo|hard] [--targets ...] [--subsets 10] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["demo", "hard"], default="demo")
    ap.add_argument("--targets", nargs="+", default=None)
    ap.add_argument("--subsets", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--workdir", default="/tmp/rtl-rungs")
    args = ap.parse_args()

    import ray
    from ranked_search import family, make_spec
    from scipy.stats import kendalltau

    from rtl.sweep.runner import target_order
    from rtl.sweep.subset import generalist, probe_error, rung_checkpoints
    from rtl.sweep.trial import units_of
    from rtl.train.finetune import FinetuneConfig, run_finetune

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    wd = Path(args.workdir)
    corpus, relations = family(wd, args.family, (32, 40), cap=300 if args.family == "demo" else 120)
    targets = args.targets or sorted(relations)[:2]
    spec = make_spec(wd, corpus, targets, "ranked", 0, 12, (32, 40))
    os.makedirs(spec.results_dir, exist_ok=True)
    units = units_of(spec)
    gen, _ = generalist(spec, units)
    pooled: dict[str, list[float]] = {}
    for target in targets:
        order = target_order(spec, target, units)
        rng = np.random.default_rng(0)
        masks = [order[:1], order[:2], order[:3], list(order)]
        while len(masks) < args.subsets:
            m = sorted(rng.choice(order, size=int(rng.integers(1, 5)), replace=False).tolist())
            if m not in masks:
                masks.append(m)
        tpath = dict(zip(spec.target_names(), spec.target_paths()))[target]
        rungs, finals = [], []
        for m in masks:
            errs = []
            for ck, _ in rung_checkpoints(spec, gen, m, 0):
                errs.append(probe_error(str(ck), spec, tpath, 0))
            vals = []
            for s in args.seeds:
                ft = FinetuneConfig(target=tpath, init=str(ck), model=spec.backbone, lr=spec.control_lr(),
                                    epochs=spec.budget.finetune_epochs, seed=s, batch_size=spec.budget.batch_size,
                                    min_side=spec.image.min_side, max_side=spec.image.max_side)
                vals.append(run_finetune(ft).val_error)
            rungs.append(errs)
            finals.append(statistics.mean(vals))
            print(json.dumps({"target": target, "mask": m, "rung_probe_errors": errs, "finetune_val": finals[-1]}),
                  flush=True)
        a = np.array(rungs)
        last = a.shape[1] - 1
        for r in range(a.shape[1]):
            t_last = kendalltau(a[:, r], a[:, last]).statistic
            t_fin = kendalltau(a[:, r], finals).statistic
            pooled.setdefault(f"rung{r + 1}_vs_last", []).append(t_last)
            pooled.setdefault(f"rung{r + 1}_vs_finetune", []).append(t_fin)
            print(f"{target}: tau(rung {r + 1}, last rung) = {t_last:+.2f}; tau(rung {r + 1}, fine-tuned val) = "
                  f"{t_fin:+.2f} (n = {len(masks)})")
    for k, v in pooled.items():
        print(f"mean over targets {k}: {np.nanmean(v):+.2f}")


if __name__ == "__main__":
    main()
