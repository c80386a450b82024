"""Source ranking quality on the hard synthetic family (`rtl synth --size hard`): per signal and combined.

Issue "Source ranking that can say none". One generalist (small_cnn, 32-40 px, `--gen-epochs` passes over
the corpus), then `rtl rank` per target (experts at `--expert-fraction` of the generalist's images, short
fine-tunes with `--seeds`). Against the family's ground truth (relations.json):

* top-1 related: the signal's best source is a related one (targets with >= 1 related source);
* precision@k: share of related sources among the signal's top k (k = number of related sources);
* correct null: on targets with no related source the verdict is "no source helps";
* harmful flagged: harmful sources whose verdict is "hurts" / ranked in the bottom half by the signal;
* Kendall tau with the TRUE per-source gain on a sample of (target, source) pairs (`--truth-pairs` per
  target: the related ones first, then others): the generalist continued on the source for
  `--truth-fraction` of its images, then a full fine-tune (`--truth-epochs`) per seed, gain = val
  accuracy minus the generalist's;
* cost: expert images / generalist images (the issue's target: <= 1.5 generalist pretrainings).

Targets of the issue: a related source first on >= 90 % of targets that have one; correct null on every
no-related target; cost <= 1.5. Everything is printed, met or not.

    python benchmarks/ranking.py [--workdir /tmp/rtl-rank] [--seeds 0 1 2] [--targets ...] [--truth-pairs 0]
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

SIGNALS = ("importance", "probe", "logme", "distance", "image_stats", "gain", "combined")


def rtl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rtl.cli", *args], check=True, stdout=subprocess.DEVNULL)


def ordered(rows: list[dict[str, Any]], signal: str) -> list[str]:
    import math

    if signal == "combined":
        return [r["unit"] for r in sorted(rows, key=lambda r: r["rank"])]
    hib = signal != "distance"
    vals = [(r["unit"], r[signal]) for r in rows if isinstance(r[signal], float) and math.isfinite(r[signal])]
    return [u for u, _ in sorted(vals, key=lambda uv: (-uv[1] if hib else uv[1], uv[0]))]


def kendall(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic) if len(a) >= 3 else float("nan")


def true_gain(corpus: str, gen: str, target: str, unit: str, args: argparse.Namespace, cache: str) -> float:
    """Full-fidelity gain of continuing the generalist on `unit`, fine-tuned `--truth-epochs` per seed."""
    from rtl.select.experts import build_experts, generalist_info, plan_experts
    from rtl.select.rank import RankConfig, _short_finetunes

    info = generalist_info(gen)
    plans = plan_experts(info, [unit], fraction=args.truth_fraction, seed=99)
    ckpt = build_experts(info, corpus, plans, cache_dir=cache)[unit]
    cfg = RankConfig(target=target, corpus=corpus, generalist=gen, seeds=args.seeds, finetune_epochs=args.truth_epochs,
                     finetune_lr=args.lr, batch_size=32)
    sides = (32, 40)
    e = _short_finetunes(cfg, str(ckpt), "small_cnn", sides)
    g = _short_finetunes(cfg, gen, "small_cnn", sides)
    return statistics.mean(e) - statistics.mean(g)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/rtl-rank")
    ap.add_argument("--targets", nargs="+", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--gen-epochs", type=int, default=4)
    ap.add_argument("--expert-fraction", type=float, default=0.05)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--truth-pairs", type=int, default=0, help="sources per target with a full-fidelity gain")
    ap.add_argument("--truth-fraction", type=float, default=0.5)
    ap.add_argument("--truth-epochs", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from rtl.select.rank import RankConfig, rank_target
    from rtl.train.pretrain import PretrainConfig, pretrain_local

    wd = Path(args.workdir)
    data, corpus, gen = wd / "data", wd / "corpus", wd / f"gen-e{args.gen_epochs}"
    t0 = time.perf_counter()
    if not (data / "relations.json").exists():
        rtl("synth", str(data), "--size", "hard", "--seed", "0")
    if not (corpus / "manifest.json").exists():
        rtl("corpus", "build", *sorted(str(p) for p in (data / "sources").iterdir()), "--out", str(corpus),
            "--min-side", "32", "--max-side", "40", "--cap", "200", "--seed", "0")
    if not (gen / "model.pt").exists():
        pretrain_local(PretrainConfig(corpus=str(corpus), strategy="source", model="small_cnn", out=str(gen),
                                      epochs=args.gen_epochs, batch_size=32, lr=0.05, storage_path=str(wd / "runs")))
    t_setup = time.perf_counter() - t0
    relations = json.loads((data / "relations.json").read_text())
    targets = args.targets or sorted(relations)
    results: list[dict[str, Any]] = []
    for name in targets:
        t1 = time.perf_counter()
        r = rank_target(RankConfig(target=str(data / "targets" / name), corpus=str(corpus), generalist=str(gen),
                                   expert_fraction=args.expert_fraction, seeds=args.seeds,
                                   finetune_epochs=args.finetune_epochs, finetune_lr=args.lr, batch_size=32,
                                   cache_dir=str(wd / "cache")), log=lambda *_: None)
        rel, harm = set(relations[name]["related"]), set(relations[name].get("harmful", []))
        row: dict[str, Any] = {"target": name, "related": sorted(rel), "harmful": sorted(harm),
                               "verdict": r["verdict"], "suggested": r["suggested"], "cost": r["cost"],
                               "seconds": time.perf_counter() - t1, "signals": {}}
        for s in SIGNALS:
            order = ordered(r["rows"], s)
            k = max(1, len(rel))
            half = set(order[len(order) // 2:])
            row["signals"][s] = {"top": order[:3], "top1_related": bool(rel) and order[0] in rel,
                                 "precision_at_k": len(set(order[:k]) & rel) / k if rel else None,
                                 "harmful_bottom_half": (len(harm & half) / len(harm)) if harm else None}
        verdicts = {x["unit"]: x["verdict"] for x in r["rows"]}
        row["harmful_hurts"] = [h for h in harm if verdicts.get(h) == "hurts"]
        row["related_helps"] = [u for u in rel if verdicts.get(u) == "helps"]
        if args.truth_pairs:
            units = sorted(rel) + [u for u in ordered(r["rows"], "combined") if u not in rel]
            sample = units[:args.truth_pairs]
            truth = {u: true_gain(str(corpus), str(gen), str(data / "targets" / name), u, args, str(wd / "cache"))
                     for u in sample}
            byu = {x["unit"]: x for x in r["rows"]}
            row["truth"] = truth
            for s in SIGNALS:
                if s == "combined":
                    est = [-byu[u]["rank"] for u in sample]
                else:
                    est = [byu[u][s] * (-1 if s == "distance" else 1) for u in sample]
                row["signals"][s]["kendall_truth"] = kendall(est, [truth[u] for u in sample])
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "signals"} | {
            "combined_top": row["signals"]["combined"]["top"]}), flush=True)
    report(results, args, t_setup)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


def report(results: list[dict[str, Any]], args: argparse.Namespace, t_setup: float) -> None:
    with_rel = [r for r in results if r["related"]]
    no_rel = [r for r in results if not r["related"]]
    print(f"\n{len(results)} targets ({len(with_rel)} with related sources, {len(no_rel)} without); seeds "
          f"{args.seeds}; setup {t_setup:.0f} s")
    print("| signal | top-1 related | precision@k | harmful in bottom half | Kendall tau vs true gain |")
    print("|---|---|---|---|---|")
    for s in SIGNALS:
        top1 = sum(r["signals"][s]["top1_related"] for r in with_rel)
        pk = [r["signals"][s]["precision_at_k"] for r in with_rel]
        hb = [r["signals"][s]["harmful_bottom_half"] for r in results if r["signals"][s]["harmful_bottom_half"] is not None]
        kt = [r["signals"][s].get("kendall_truth") for r in results if r["signals"][s].get("kendall_truth") is not None]
        kt = [x for x in kt if x == x]
        print(f"| {s} | {top1}/{len(with_rel)} | {statistics.mean(pk) if pk else float('nan'):.2f} | "
              f"{statistics.mean(hb) if hb else float('nan'):.2f} | "
              f"{statistics.mean(kt) if kt else float('nan'):.2f} (n={len(kt)}) |")
    nulls = sum(r["verdict"].startswith("no source helps") for r in no_rel)
    false_nulls = sum(r["verdict"].startswith("no source helps") for r in with_rel)
    print(f"correct null on no-related targets: {nulls}/{len(no_rel)}; 'no source helps' on targets WITH a "
          f"related source: {false_nulls}/{len(with_rel)}")
    print(f"related sources judged 'helps': {sum(len(r['related_helps']) for r in with_rel)}/"
          f"{sum(len(r['related']) for r in with_rel)}; harmful judged 'hurts': "
          f"{sum(len(r['harmful_hurts']) for r in results)}/{sum(len(r['harmful']) for r in results)}")
    c = results[0]["cost"]
    print(f"cost: experts {c['expert_images']} images = {c['experts_vs_generalist']:.2f} x the generalist "
          f"(issue target <= 1.5); ranking seconds per target: median "
          f"{statistics.median(r['seconds'] for r in results):.0f}")


if __name__ == "__main__":
    main()
