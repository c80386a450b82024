"""Transfer gain on the demo family: does pretraining on a target's RELATED sources beat scratch?

For every held-out target of the synthetic family (rtl.data.synth; `relations.json` names each
target's related sources) fine-tune small_cnn with identical settings and seeds from:
  (a) scratch     random init
  (b) source      pretrained on the FULL corpus (all sources)
  (c) subset      pretrained only on the target's related sources (the ground truth of relations.json)
  (d) unrelated   [control, on by default] pretrained on as many UNRELATED sources (other industries),
                  picked so their corpus row count is closest to the related ones' (same data budget)
and report val and test error rate, mean ± sample std over seeds. Only the val error picks the best
fine-tuning epoch (rtl.train.finetune); the test error is reported, never used for any choice.

The question is the one of Ngiam et al. 2018 ("Domain Adaptive Transfer Learning with Specialist
Models"): a source set matched to the target can beat more, less related data; (d) separates "related
data helps" from "any pretraining helps".

Pretraining runs in-process (`pretrain_local`, no Ray) and is cached under WORKDIR/ckpt keyed by
everything that determines it, fine-tuning summaries under WORKDIR/results: re-runs only redo what
changed. Uses the demo family at /tmp/demo-ws/{data,corpus} read-only when present, otherwise
generates its own under WORKDIR.

    .venv/bin/python benchmarks/transfer_gain.py --quick
    .venv/bin/python benchmarks/transfer_gain.py --pt-epochs 10 --ft-epochs 20 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

ARMS = ("scratch", "source", "subset", "unrelated")
DEMO_WS = Path("/tmp/demo-ws")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/rtl-gain", help="checkpoints, cached results, own data")
    ap.add_argument("--data", default=None, help="synth family folder (default: /tmp/demo-ws/data or own)")
    ap.add_argument("--corpus", default=None, help="its corpus (default: /tmp/demo-ws/corpus or own)")
    ap.add_argument("--targets", default=None, help="comma list (default: all targets in relations.json)")
    ap.add_argument("--quick", action="store_true", help="pt 5 epochs, ft 12 epochs, seeds 0,1,2")
    ap.add_argument("--pt-epochs", type=int, default=10)
    ap.add_argument("--pt-lr", type=float, default=0.1)
    ap.add_argument("--pt-batch", type=int, default=64)
    ap.add_argument("--pt-samples", type=int, default=None,
                    help="images per pretraining epoch for EVERY pretrained arm (default: rows of its view)")
    ap.add_argument("--ft-epochs", type=int, default=20)
    ap.add_argument("--ft-lr", type=float, default=0.01)
    ap.add_argument("--ft-batch", type=int, default=32)
    ap.add_argument("--freeze-depth", type=int, default=0)
    ap.add_argument("--side", type=int, default=None,
                    help="fine-tune crop side for every arm (default: the corpus min_side, as pretraining)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--no-control", action="store_true", help="skip arm (d) unrelated")
    ap.add_argument("--arms", default=",".join(ARMS),
                    help="comma list of arms to run (scratch, the baseline, is always run)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: keep it low)")
    ap.add_argument("--json", default=None, help="write all results here (default WORKDIR/transfer_gain.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.pt_epochs, args.ft_epochs = min(args.pt_epochs, 5), min(args.ft_epochs, 12)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- data
def ensure_data(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """(family folder, corpus folder): given, the shared demo ones (read-only), or generated in `work`."""
    if args.data and args.corpus:
        return Path(args.data), Path(args.corpus)
    if (DEMO_WS / "data/relations.json").is_file() and (DEMO_WS / "corpus/manifest.json").is_file():
        return DEMO_WS / "data", DEMO_WS / "corpus"
    data, corpus = work / "data", work / "corpus"
    if not (data / "relations.json").is_file():
        from rtl.data.synth import generate_family

        print(f"generating the demo family in {data} ...", flush=True)
        generate_family(data, size="demo", seed=0)
    if not (corpus / "manifest.json").is_file():
        from rtl.data.corpus_build import build_corpus

        print(f"building the corpus in {corpus} ...", flush=True)
        build_corpus(sorted((data / "sources").iterdir()), corpus, min_side=32, max_side=40, cap=300, seed=0,
                     progress=False)
    return data, corpus


def source_rows(manifest: dict) -> dict[str, int]:
    """Corpus rows per source dataset (after capping)."""
    rows: dict[str, int] = {d: 0 for d in manifest["datasets"]}
    for c in manifest["classes"]:
        rows[c["dataset"]] += int(manifest["counts_after"].get(str(c["id"]), 0))
    return rows


def pick_unrelated(related: list[str], target_domain: set[str], manifest: dict) -> list[str]:
    """As many sources as `related`, none related and none of the target's domain, with the corpus row
    count closest to the related ones' (so (c) vs (d) compares relatedness, not data volume)."""
    rows = source_rows(manifest)
    want = sum(rows[d] for d in related)
    pool = sorted(d for d, info in manifest["datasets"].items()
                  if d not in related and not target_domain & set(info.get("domain", [])))
    combos = itertools.combinations(pool, len(related))
    return list(min(combos, key=lambda c: (abs(sum(rows[d] for d in c) - want), c)))


# ------------------------------------------------------------------------------------------- runs
def pretrain(args: argparse.Namespace, work: Path, corpus: Path, version: str,
             datasets: list[str] | None) -> tuple[Path, float, bool]:
    """Cached in-process pretraining; returns (checkpoint dir, seconds, was_cached).

    The resume state lives under a folder keyed by `spec` INCLUDING epochs: rtl's run name leaves epochs
    out on purpose (more epochs = resume), but a resumed run keeps the finished run's momentum and
    restarts the cosine schedule mid-way (warm restart), which is not the clean N-epoch run we compare."""
    from rtl.train.pretrain import PretrainConfig, pretrain_local

    spec = {"corpus_version": version, "datasets": sorted(datasets) if datasets else None,
            "epochs": args.pt_epochs, "lr": args.pt_lr, "batch": args.pt_batch, "samples": args.pt_samples}
    out = work / "ckpt" / f"{'subset' if datasets else 'source'}-{_key(spec)}"
    if (out / "model.pt").is_file():
        return out, 0.0, True
    cfg = PretrainConfig(corpus=str(corpus), strategy="subset" if datasets else "source", model="small_cnn",
                         out=str(out), epochs=args.pt_epochs, batch_size=args.pt_batch, lr=args.pt_lr,
                         warmup_epochs=min(1.0, args.pt_epochs / 5), cpus_per_worker=args.threads,
                         datasets=sorted(datasets) if datasets else None, samples_per_epoch=args.pt_samples,
                         storage_path=str(work / "runs" / out.name), seed=0)
    t0 = time.perf_counter()
    pretrain_local(cfg)
    return out, time.perf_counter() - t0, False


def finetune(args: argparse.Namespace, work: Path, target: Path, init: str, sides: tuple[int, int]) -> dict:
    """Cached run_finetune_seeds summary (dict) for one (target, init)."""
    from rtl.train.finetune import FinetuneConfig, run_finetune_seeds

    cfg = FinetuneConfig(target=str(target), init=init, model="small_cnn", lr=args.ft_lr, epochs=args.ft_epochs,
                         batch_size=args.ft_batch, freeze_depth=args.freeze_depth, min_side=sides[0],
                         max_side=sides[1])
    path = work / "results" / f"{target.name}-{_key([cfg.model_dump(), args.seeds])}.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    summary = run_finetune_seeds(cfg, args.seeds).to_dict()
    summary["seconds"] = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, default=str))
    return summary


# ------------------------------------------------------------------------------------------- report
def _pm(mean: float | None, std: float | None) -> str:
    return "      -      " if mean is None else f"{100 * mean:5.1f} ± {100 * std:4.1f}"


def print_table(title: str, rows: dict[str, dict]) -> None:
    base = rows["scratch"]
    print(f"\n{title}")
    print(f"  {'arm':10s} {'val err %':>13s} {'test err %':>13s} {'Δval':>6s} {'Δtest':>6s}  pretrained on")
    for arm, r in rows.items():
        dv = 100 * (r["val_mean"] - base["val_mean"])
        dt = 100 * (r["test_mean"] - base["test_mean"]) if r["test_mean"] is not None else float("nan")
        print(f"  {arm:10s} {_pm(r['val_mean'], r['val_std']):>13s} {_pm(r['test_mean'], r['test_std']):>13s} "
              f"{dv:+6.1f} {dt:+6.1f}  {r.get('on', '')}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data, corpus = ensure_data(args, work)
    from rtl.data.convention import load_dataset
    from rtl.data.corpus import open_corpus

    manifest = open_corpus(corpus).manifest
    version = manifest["version"]
    sides = (args.side or int(manifest["params"]["min_side"]),
             max(args.side or 0, int(manifest["params"]["max_side"])))
    relations = json.loads((data / "relations.json").read_text())
    targets = args.targets.split(",") if args.targets else sorted(relations)
    wanted = {a.strip() for a in args.arms.split(",")} | {"scratch"}
    if wanted - set(ARMS):
        raise SystemExit(f"unknown arm(s) {sorted(wanted - set(ARMS))}; valid: {', '.join(ARMS)}")
    arms = [a for a in ARMS if a in wanted and not (a == "unrelated" and args.no_control)]
    print(f"family {data}, corpus {corpus} (version {version}, {manifest.get('n_rows_out')} rows, sides {sides}); "
          f"small_cnn; pretrain {args.pt_epochs} ep lr {args.pt_lr} batch {args.pt_batch} samples/ep "
          f"{args.pt_samples or 'view rows'}; fine-tune {args.ft_epochs} ep lr {args.ft_lr} batch {args.ft_batch} "
          f"freeze {args.freeze_depth}; seeds {args.seeds}; {args.threads} thread(s); load {os.getloadavg()}",
          flush=True)
    t_all = time.perf_counter()
    timing: dict[str, float] = {}
    src_ckpt = None
    if "source" in arms:
        src_ckpt, s, cached = pretrain(args, work, corpus, version, None)
        timing["pretrain source"] = s
        print(f"pretrained source (full corpus){' [cached]' if cached else f' in {s:.0f}s'}", flush=True)

    results: dict[str, dict[str, dict]] = {}
    for t in targets:
        tdir = data / "targets" / t
        related = list(relations[t]["related"])
        chosen = {"scratch": None, "source": "all sources", "subset": related}
        if "unrelated" in arms:
            chosen["unrelated"] = pick_unrelated(related, set(load_dataset(tdir).domain), manifest)
        results[t] = {}
        for arm in arms:
            init = "scratch"
            if arm == "source":
                init = str(src_ckpt)
            elif arm in ("subset", "unrelated"):
                ck, s, cached = pretrain(args, work, corpus, version, chosen[arm])
                timing[f"pretrain {t} {arm}"] = s
                init = str(ck)
            summary = finetune(args, work, tdir, init, sides)
            summary["on"] = ", ".join(chosen[arm]) if isinstance(chosen[arm], list) else (chosen[arm] or "-")
            timing[f"finetune {t} {arm}"] = summary.get("seconds", 0.0)
            results[t][arm] = summary
            print(f"  {t:16s} {arm:10s} val {_pm(summary['val_mean'], summary['val_std'])}  test "
                  f"{_pm(summary['test_mean'], summary['test_std'])}", flush=True)

    for t in targets:
        print_table(f"{t} (related: {', '.join(relations[t]['related'])})", results[t])
    mean_rows: dict[str, dict] = {}
    for arm in arms:
        vals = [results[t][arm]["val_mean"] for t in targets]
        tests = [results[t][arm]["test_mean"] for t in targets]
        mean_rows[arm] = {"val_mean": sum(vals) / len(vals), "val_std": _spread(vals),
                          "test_mean": sum(tests) / len(tests), "test_std": _spread(tests), "on": ""}
    print_table(f"MEAN over {len(targets)} targets (± = std across targets of the per-target means)", mean_rows)
    wins_val = wins_test = beats = None
    if "subset" in arms:
        wins_val = sum(results[t]["subset"]["val_mean"] < results[t]["scratch"]["val_mean"] for t in targets)
        wins_test = sum(results[t]["subset"]["test_mean"] < results[t]["scratch"]["test_mean"] for t in targets)
        beats = mean_rows["subset"]["val_mean"] < mean_rows["scratch"]["val_mean"]
        print(f"\n(c) subset vs (a) scratch: lower val error on {wins_val}/{len(targets)} targets, lower test error "
              f"on {wins_test}/{len(targets)}; mean val {100 * mean_rows['subset']['val_mean']:.1f}% vs "
              f"{100 * mean_rows['scratch']['val_mean']:.1f}% -> related-source pretraining "
              f"{'BEATS' if beats else 'does NOT beat'} scratch on val.")
    wall = time.perf_counter() - t_all
    print(f"wall {wall:.0f}s (cached steps count 0); load now {os.getloadavg()}")
    out = {"settings": {k: v for k, v in vars(args).items()}, "data": str(data), "corpus": str(corpus),
           "corpus_version": version, "sides": sides, "results": results, "mean": mean_rows, "timing": timing,
           "wall_s": wall, "subset_beats_scratch_val": beats, "wins_val": wins_val, "wins_test": wins_test}
    Path(args.json or work / "transfer_gain.json").write_text(json.dumps(out, indent=1, default=str))
    return out


def _spread(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


if __name__ == "__main__":
    main()
