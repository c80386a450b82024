"""Does the cut predict the end? Kendall tau between a candidate's probe error after the cut and after the
whole pretraining (rtl.sweep.candidates), measured on a finished `ranked_search.py` run of `ranked_cand`.

The issue asks to measure, before relying on a fidelity, whether early-rung rankings predict final ones.
For every (search seed, target) of the run this trains the candidates the sweep did NOT finish to the end
(each continues its cut: only the remaining epochs are paid; the images go into that run's cache, so run it
after the benchmark's rows are written) and compares the probe errors:

* Kendall tau (tau-b, ties allowed) per target between cut and full probe errors, and its mean;
* top-1 agreement: the candidate the cut picked is the best at the end (ties count as agreement);
* probe regret of the pick: full probe error of the pick minus the best full probe error.

    python benchmarks/candidate_fidelity.py --workdir /tmp/rc-d4 --family-seed 4 --seeds 0 1 2 [--rows R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ranked_search import family, make_spec  # noqa: E402


def kendall_tau_b(a: list[float], b: list[float]) -> float | None:
    """Kendall's tau-b (ties in either list allowed); None when either list is constant."""
    conc = disc = ta = tb = 0
    n = len(a)
    for i in range(n):
        for j in range(i + 1, n):
            da, db = (a[i] > a[j]) - (a[i] < a[j]), (b[i] > b[j]) - (b[i] < b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ta += 1
            elif db == 0:
                tb += 1
            elif da == db:
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + ta) * (conc + disc + tb)) ** 0.5
    return None if denom == 0 else (conc - disc) / denom


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--family-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--rows", type=Path, help="append one JSON line per (seed, target)")
    args = ap.parse_args()

    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.candidates import best_candidate
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import pretrain_plan, units_of

    corpus, rel = family(args.workdir, "hard", (32, 40), 120, args.family_seed)
    targets = sorted(rel)  # relations.json: {target: {"related": [...]}}
    rows = []
    for seed in args.seeds:
        spec = make_spec(args.workdir, corpus, targets, "ranked_cand", seed, args.trials, (32, 40))
        units = units_of(spec)
        gen, _ = generalist(spec, units)
        for target, path in zip(targets, spec.target_paths()):
            plan = pretrain_plan(spec, TrialParams(number=0, enqueued=IMPORTANCE_TRIAL, mask=units, k=len(units),
                                                   temperature=spec.search.sources.importance_trial, lr=0.01,
                                                   seed=seed))
            _, _, best, cands = best_candidate(spec, plan, path, gen, complete_all=True)
            cut = [c.probe_error for c in cands]
            end = [c.full_probe_error for c in cands]
            row = {"family_seed": args.family_seed, "seed": seed, "target": target, "pick": best,
                   "candidates": [[c.sources, c.temperature] for c in cands], "cut": cut, "full": end,
                   "tau": kendall_tau_b(cut, end), "top1": end[best] <= min(end) + 1e-12,
                   "regret": end[best] - min(end)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.rows:
                with open(args.rows, "a") as f:
                    f.write(json.dumps(row) + "\n")
    taus = [r["tau"] for r in rows if r["tau"] is not None]
    print(f"\n{len(rows)} (seed, target) pairs; mean Kendall tau-b cut vs end {statistics.mean(taus):+.2f} "
          f"(defined on {len(taus)}); top-1 agreement {sum(r['top1'] for r in rows)}/{len(rows)}; "
          f"median probe regret of the pick {statistics.median(r['regret'] for r in rows):.3f}")


if __name__ == "__main__":
    main()
