"""Paired regret of two arms of benchmarks/ranked_search.py, pooled over several family draws.

Each rows file is one draw (`--rows` of ranked_search.py); within it, the oracle of a (seed, target) is the
lowest test error of any arm's trials there (as ranked_search.py's report computes it), so adding an arm to
a file can only lower the oracle. Pairs are (draw, seed, target) that both arms ran. Prints, pooled and per
draw: arm A better / equal / worse, the median and mean of A - B with a 95 % bootstrap interval of the mean,
the two-sided Wilcoxon signed-rank p (zero differences dropped), each arm's median regret, and the ratio of
pretraining images A / B (per seed, then the mean over the draw's seeds).

    python benchmarks/paired_regret.py --arms ranked_drop12q random_bits \
        docs/measurements/search-benchmark-draw5.jsonl docs/measurements/search-benchmark-draw6.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any


def regrets(rows: list[dict[str, Any]]) -> dict[tuple[int, str, str], dict[str, Any]]:
    """(seed, target, arm) -> row with `regret` against the oracle over every arm of the file."""
    by = {(r["seed"], r["target"], r["arm"]): r for r in rows}
    for seed, target in {(r["seed"], r["target"]) for r in rows}:
        here = [r for (s, t, _), r in by.items() if (s, t) == (seed, target)]
        oracle = min(r["best_test_any"] if r.get("best_test_any") is not None else r["test"] for r in here)
        for r in here:
            r["regret"] = r["test"] - oracle
    return by


def compare(files: list[Path], a: str, b: str, seeds: list[int] | None = None) -> dict[str, Any]:
    diffs, ra, rb, ratios, per_draw = [], [], [], [], {}
    for f in files:
        by = regrets([json.loads(line) for line in f.read_text().splitlines() if line.strip()])
        common = sorted((s, t) for s, t, arm in by if arm == a and (s, t, b) in by
                        and (seeds is None or s in seeds))
        d = [by[p + (a,)]["regret"] - by[p + (b,)]["regret"] for p in common]
        per_draw[f.stem] = d
        diffs += d
        ra += [by[p + (a,)]["regret"] for p in common]
        rb += [by[p + (b,)]["regret"] for p in common]
        for s in sorted({p[0] for p in common}):
            ia = next(by[p + (a,)]["images"] for p in common if p[0] == s)
            ib = next(by[p + (b,)]["images"] for p in common if p[0] == s)
            ratios.append((f.stem, s, ia / ib))
    return {"diffs": diffs, "per_draw": per_draw, "regret_a": ra, "regret_b": rb, "ratios": ratios}


def summary(d: list[float]) -> str:
    from scipy.stats import wilcoxon

    if not d:
        return "no common pairs"
    nz = [x for x in d if x != 0]
    rng = random.Random(0)
    means = sorted(statistics.mean(rng.choices(d, k=len(d))) for _ in range(2000))
    p = f"{wilcoxon(nz).pvalue:.3f}" if nz else "n/a (all equal)"
    return (f"{len(d)} pairs, better/equal/worse {sum(x < 0 for x in d)}/{len(d) - len(nz)}/{sum(x > 0 for x in d)}, "
            f"median {statistics.median(d):+.3f}, mean {statistics.mean(d):+.3f} "
            f"[95 % bootstrap {means[49]:+.3f}, {means[1949]:+.3f}], Wilcoxon p = {p}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="+", type=Path, help="rows .jsonl of ranked_search.py, one per draw")
    ap.add_argument("--arms", nargs=2, required=True, metavar=("A", "B"))
    ap.add_argument("--seeds", nargs="+", type=int, help="only these search seeds")
    args = ap.parse_args()
    a, b = args.arms
    r = compare(args.rows, a, b, args.seeds)
    print(f"{a} - {b} (regret; negative = {a} better)")
    for draw, d in r["per_draw"].items():
        print(f"  {draw}: {summary(d)}")
    print(f"  pooled: {summary(r['diffs'])}")
    if r["diffs"]:
        print(f"  median regret {a} {statistics.median(r['regret_a']):.3f}, {b} {statistics.median(r['regret_b']):.3f}")
    for draw, s, x in r["ratios"]:
        print(f"  images {a}/{b} {draw} seed {s}: {x:.2f}")
    if r["ratios"]:
        print(f"  images {a}/{b}, mean over seeds: {statistics.mean(x for _, _, x in r['ratios']):.2f}")


if __name__ == "__main__":
    main()
