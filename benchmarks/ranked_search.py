"""Ranked search vs random search over bits vs TPE + ASHA over bits: quality and pretraining compute.

Issue "A source search that beats random search at a third of its pretraining compute". Per (search
seed, target), three sweeps with the same trials per target, fine-tune schedule and seed, each with its
own COLD pretraining cache (so each arm pays for everything it needs, ranking included):

* `ranked`       -- the default: top-k of the target's ranking + swaps, controls scratch / generalist /
                    all sources, enqueued top-1..3, subset pretraining continues the generalist in rungs,
                    successive halving on a probe score (scheduler `rungs`);
* `random_bits`  -- one bit per source, Optuna RandomSampler, FIFO (no early stopping), controls off;
* `tpe_asha_bits`-- one bit per source, TPE, ASHA over fine-tune epochs, controls off.

Compute = pretraining images consumed by the arm = the sum over its cache entries of the images in their
meta history (generalist, experts, rung continuations, bit-subset pretrainings). Quality per (seed,
target, arm): best val error of a COMPLETE searched-or-control trial, its test error, the chosen subset;
regret = its test error minus the lowest test error of any arm's best-by-val trial on that (seed,
target) -- a proxy for the oracle subset (the exhaustive full-fidelity oracle is out of reach on 2 CPUs:
2^N subsets), say so when reporting. Jaccard of the chosen subset with the family's related set
(relations.json); correct null = on a target without related source, the ranked arm's verdict says no
source helps. Paired Wilcoxon signed-rank test of regret (ranked vs random_bits) over (seed, target).

    python benchmarks/ranked_search.py [--family demo|hard] [--targets t1 t2] [--seeds 0 1 2] [--trials 12]

Prints a table and `ratio images ranked/random` and `median regret ranked vs random`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]


def rtl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rtl.cli", *args], check=True, stdout=subprocess.DEVNULL)


def family(workdir: Path, name: str, sides: tuple[int, int], cap: int) -> tuple[Path, dict[str, Any]]:
    data, corpus = workdir / f"data-{name}", workdir / f"corpus-{name}"
    if not (data / "relations.json").exists():
        rtl("synth", str(data), "--size", name, "--seed", "0")
    if not (corpus / "manifest.json").exists():
        rtl("corpus", "build", *sorted(str(p) for p in (data / "sources").iterdir()), "--out", str(corpus),
            "--min-side", str(sides[0]), "--max-side", str(sides[1]), "--cap", str(cap), "--seed", "0")
    return corpus, json.loads((data / "relations.json").read_text())


def make_spec(workdir: Path, corpus: Path, targets: list[str], arm: str, seed: int, trials: int,
              sides: tuple[int, int]) -> Any:
    import yaml

    from rtl.sweep.spec import spec_from_dict

    d = yaml.safe_load((ROOT / "sweeps" / "demo.yaml").read_text())
    d.update(name=f"b-{arm}-s{seed}", workspace=str(workdir / "ws"), corpus=str(corpus), seeds=[seed],
             targets=[str(corpus.parent / f"data-{corpus.name.split('-', 1)[1]}" / "targets" / t) for t in targets])
    d["image"] = {"min_side": sides[0], "max_side": sides[1]}
    d["budget"]["trials_per_target"] = trials
    d["storage"] = {"cache": str(workdir / "caches" / f"{arm}-s{seed}")}
    if arm == "ranked":
        d["search"]["sources"] = {"by": "datasets", "space": "ranked"}
        d["scheduler"] = {"name": "rungs", "reduction_factor": 3}
        d["controls"] = {"scratch": False, "generalist": True, "uniform": True, "importance": False,
                         "imagenet": False}
    else:
        d["search"]["sources"] = {"by": "datasets", "space": "bits"}
        d["scheduler"] = {"name": "fifo"} if arm == "random_bits" else {"name": "asha", "grace_period": 2,
                                                                         "reduction_factor": 2}
        d["searcher"] = {"name": "random" if arm == "random_bits" else "tpe", "n_startup_trials": 3}
        d["controls"] = {"scratch": False, "uniform": False, "importance": False, "imagenet": False}
    return spec_from_dict(d, "benchmark")


def images_consumed(cache_dir: str) -> int:
    total = 0
    for meta in Path(cache_dir).glob("*/ckpt/meta.json"):
        total += sum(int(h.get("images", 0)) for h in json.loads(meta.read_text()).get("history", []))
    return total


def best_of(results_dir: str, target: str) -> dict[str, Any]:
    from rtl.sweep.status import target_trials

    done = [t for t in target_trials(results_dir, target) if t.state.name == "COMPLETE"]
    best = min(done, key=lambda t: (t.value, t.number))
    mask = best.user_attrs.get("rtl.mask", "none")
    return {"val": best.value, "test": best.user_attrs.get("rtl.test_error"),
            "mask": [] if mask in ("none", "generalist") else mask.split(","), "n_done": len(done)}


def jaccard(a: list[str], b: list[str]) -> float:
    return 1.0 if not a and not b else len(set(a) & set(b)) / len(set(a) | set(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["demo", "hard"], default="demo")
    ap.add_argument("--targets", nargs="+", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--arms", nargs="+", default=["ranked", "random_bits", "tpe_asha_bits"])
    ap.add_argument("--workdir", default="/tmp/rtl-ranked")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from rtl.sweep.runner import run_sweep

    sides = (32, 40)
    workdir = Path(args.workdir)
    corpus, relations = family(workdir, args.family, sides, cap=300 if args.family == "demo" else 120)
    targets = args.targets or sorted(relations)
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for seed in args.seeds:
        for arm in args.arms:
            spec = make_spec(workdir, corpus, targets, arm, seed, args.trials, sides)
            t0 = time.perf_counter()
            try:
                run_sweep(spec)
            except Exception as e:  # an errored trial: keep what finished, say so
                print(f"{arm} seed {seed}: {e}", flush=True)
            secs = time.perf_counter() - t0
            images = images_consumed(spec.cache_dir())
            for target in targets:
                b = best_of(spec.results_dir, target)
                rel = relations[target].get("related", [])
                row = {"seed": seed, "target": target, "arm": arm, **b, "related": rel,
                       "jaccard": jaccard(b["mask"], rel), "images": images, "seconds": secs}
                rk = Path(spec.results_dir) / "rankings" / f"{target}.json"
                if rk.exists():
                    r = json.loads(rk.read_text())
                    row.update(ranking_top=r["order"][:3], verdict=r["verdict"], suggested=r["suggested"])
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("related",)}), flush=True)
    report(rows)
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def report(rows: list[dict[str, Any]]) -> None:
    from scipy.stats import wilcoxon

    by = {(r["seed"], r["target"], r["arm"]): r for r in rows}
    pairs = sorted({(r["seed"], r["target"]) for r in rows})
    for p in pairs:  # regret vs the best test error of any arm's chosen trial on this (seed, target)
        tests = [by[p + (a,)]["test"] for a in ("ranked", "random_bits", "tpe_asha_bits") if p + (a,) in by]
        best = min(t for t in tests if t is not None)
        for a in ("ranked", "random_bits", "tpe_asha_bits"):
            if p + (a,) in by:
                by[p + (a,)]["regret"] = by[p + (a,)]["test"] - best
    print("\n| seed | target | arm | best val | its test | regret | subset | jaccard | images |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['target']} | {r['arm']} | {r['val']:.3f} | {r['test']:.3f} | {r['regret']:.3f} | "
              f"{','.join(r['mask']) or '(generalist/none)'} | {r['jaccard']:.2f} | {r['images']} |")
    arms = sorted({r["arm"] for r in rows})
    for a in arms:
        rr = [r for r in rows if r["arm"] == a]
        imgs = {(r["seed"]): r["images"] for r in rr}
        print(f"{a}: median regret {statistics.median(r['regret'] for r in rr):.3f}, mean Jaccard (targets with "
              f"related) {statistics.mean([r['jaccard'] for r in rr if r['related']] or [float('nan')]):.2f}, "
              f"images per seed {statistics.mean(imgs.values()):.0f}")
    if "ranked" in arms and "random_bits" in arms:
        ri = statistics.mean(r["images"] for r in rows if r["arm"] == "ranked")
        bi = statistics.mean(r["images"] for r in rows if r["arm"] == "random_bits")
        print(f"ratio images ranked/random_bits: {ri / bi:.2f}")
        d = [by[p + ("ranked",)]["regret"] - by[p + ("random_bits",)]["regret"] for p in pairs
             if p + ("ranked",) in by and p + ("random_bits",) in by]
        if any(x != 0 for x in d):
            print(f"paired regret ranked - random_bits: median {statistics.median(d):+.3f}, Wilcoxon p = "
                  f"{wilcoxon(d).pvalue:.3f} (n = {len(d)})")
        else:
            print(f"paired regret ranked - random_bits: all {len(d)} differences are 0")
        nulls = [r for r in rows if r["arm"] == "ranked" and not r["related"] and "verdict" in r]
        if nulls:
            ok = sum(r["verdict"].startswith("no source helps") for r in nulls)
            print(f"correct null (ranking verdict) on no-related targets: {ok}/{len(nulls)}")


if __name__ == "__main__":
    main()
