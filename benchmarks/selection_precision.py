"""Selection benchmark: do importance weights (Ngiam et al. 2018) recover the related source datasets?

    .venv/bin/python benchmarks/selection_precision.py [--workdir /tmp/rtl-bench] [--quick]

1. Generates the embedded demo family (`rtl.data.synth.generate_family`, size "demo", seed 0) once
   into WORKDIR/family (cached: reused when relations.json exists).
2. Builds the source corpus from the 12 source datasets (Ray Data; cached per side/cap setting).
   Sides 32/40 by default: small_cnn on CPU, and the signal importance weighting needs (which dataset
   an image looks like: surface, colour, pitch, noise) survives that downscale. max_downscale 16 so the
   source rows are whole downscaled images like the target inputs (see `prepare_corpus`).
3. Pretrains a `source` small_cnn on the corpus rows of the train+val splits (in-process,
   `pretrain_local`); the corpus test rows are kept back to report how good the source model is
   (class / dataset / industry top-1), which is what the selection quality depends on.
4. For every held-out target (family/targets/*): source-model inference on the target TRAIN split ->
   importance weights at each temperature -> class mass (what `weighted` pretraining samples) ->
   mass per source dataset -> top-3 datasets, compared with relations.json.

Metrics per target: precision@3 = |top3 & related| / 3 (the issue's metric; every demo target has
exactly 2 related sources, so its maximum is 2/3 = 0.667) and recall@3 = |top3 & related| / |related|
(1.0 = both related sources in the top 3), R-precision = |top-|related| & related| / |related| (are the
related sources exactly the top 2?), the total mass on related datasets and the top domain by mass.

Nothing here is tuned against relations.json: the settings are fixed above and in the flags, and every
temperature asked for is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_WORKDIR = "/tmp/rtl-bench"


# ------------------------------------------------------------------------------------- shared steps
# (benchmarks/transferability.py imports these)
def prepare_family(workdir: Path, *, seed: int = 0) -> Path:
    """The demo family under workdir/family (generated once)."""
    from rtl.data.synth import format_summary, generate_family

    fam = workdir / "family"
    if (fam / "relations.json").is_file():
        return fam
    print(f"[family] generating demo family into {fam} ...", flush=True)
    print(format_summary(generate_family(fam, size="demo", seed=seed)), flush=True)
    return fam


def prepare_corpus(workdir: Path, family: Path, *, min_side: int, max_side: int, cap: int | None,
                   max_downscale: float = 16.0) -> Path:
    """Corpus of all source datasets (cached per setting).

    `max_downscale`: images needing more downscaling than this are cut into native-resolution patches.
    The default 4 suits 224/256 sides; at 32/40 it would patch almost every demo image (100-600 px)
    while target images are always downscaled whole (`fit_size`), so source rows and target inputs would
    not look alike. 16 keeps every demo image up to 640 px whole (the few 1500-2000 px ones are patched).
    """
    from rtl.data.corpus import build_corpus

    out = workdir / f"corpus-{min_side}-{max_side}-cap{cap or 'all'}-ds{max_downscale:g}"
    if (out / "manifest.json").is_file():
        return out
    srcs = sorted(p for p in (family / "sources").iterdir() if p.is_dir())
    t0 = time.perf_counter()
    m = build_corpus(srcs, out, min_side=min_side, max_side=max_side, cap=cap, seed=0,
                     max_downscale=max_downscale, progress=False)
    print(f"[corpus] {m['n_rows_out']} rows from {m['n_images_in']} images, {len(m['classes'])} classes "
          f"in {time.perf_counter() - t0:.1f} s -> {out}", flush=True)
    return out


def pretrain(corpus: Path, out: Path, *, epochs: int, seed: int = 0, datasets: list[str] | None = None,
             domains: list[str] | None = None, splits: list[str] | None = None, lr: float = 0.05,
             batch_size: int = 64, samples_per_epoch: int | None = None, threads: int = 1,
             strategy: str | None = None) -> tuple[Path, float]:
    """small_cnn pretrained in-process; cached by out/meta.json. -> (checkpoint dir, seconds spent)."""
    from rtl.train.pretrain import PretrainConfig, pretrain_local

    if (out / "meta.json").is_file():
        return out, 0.0
    strategy = strategy or ("subset" if (datasets or domains) else "source")
    cfg = PretrainConfig(corpus=str(corpus), strategy=strategy, model="small_cnn", out=str(out), epochs=epochs,
                         batch_size=batch_size, lr=lr, warmup_epochs=min(1.0, epochs / 4), seed=seed,
                         datasets=datasets, domains=domains, splits=splits, samples_per_epoch=samples_per_epoch,
                         cpus_per_worker=threads,
                         # epochs in the storage path: run names ignore epochs (resume), we want fresh runs
                         storage_path=str(out.parent / "ray_runs" / f"{out.name}-e{epochs}"))
    t0 = time.perf_counter()
    pretrain_local(cfg)
    return out, time.perf_counter() - t0


def corpus_prior(view) -> np.ndarray:
    """(K,) row counts of the corpus view, 0 for classes outside it."""
    prior = np.zeros(view.num_classes)
    for cid, n in view.class_counts().items():
        prior[int(cid)] = n
    return prior


def source_accuracy(ckpt: Path, corpus: Path, split: str = "test", threads: int = 1) -> dict[str, float]:
    """Top-1 of the source model on held-out corpus rows: class, dataset (arg-max class's dataset) and
    industry level. Selection only needs the coarser levels to be right."""
    from torch.utils.data import DataLoader

    from rtl.data.corpus import open_corpus
    from rtl.train.checkpoint import load_checkpoint
    from rtl.train.corpus_data import CorpusDataset, read_view_table

    view = open_corpus(corpus, splits=[split])
    model, meta = load_checkpoint(ckpt)
    ds = CorpusDataset(read_view_table(view), crop=int(meta["min_side"]), in_channels=model.in_channels,
                       train=False)
    torch.set_num_threads(threads)
    model.eval()
    preds = []
    with torch.no_grad():
        for x, _ in DataLoader(ds, batch_size=256):
            preds.append(model(x).argmax(1).numpy())
    pred, true = np.concatenate(preds), ds.class_ids
    table = {int(c["id"]): c for c in view.manifest["classes"]}
    dsname = np.array([table[int(i)]["dataset"] for i in range(len(table))])
    industry = np.array([(table[int(i)]["domain"] or ["?"])[0] for i in range(len(table))])
    return {"n": int(len(true)), "class_top1": float((pred == true).mean()),
            "dataset_top1": float((dsname[pred] == dsname[true]).mean()),
            "industry_top1": float((industry[pred] == industry[true]).mean())}


# ------------------------------------------------------------------------------------- the benchmark
def select_for_target(ckpt: Path, corpus: Path, target: Path, temperatures: list[float | None],
                      threads: int = 1) -> dict:
    """Importance mass per source dataset at each temperature for one target (train split)."""
    from rtl.data.corpus import open_corpus
    from rtl.select.importance import aggregate_mass, class_mass, importance_weights
    from rtl.select.inference import infer_checkpoint
    from rtl.select.ranking import rank_sources

    view = open_corpus(corpus)
    params = view.manifest["params"]
    inf, _, _ = infer_checkpoint(ckpt, target, split="train", num_threads=threads,
                                 default_sides=(params["min_side"], params["max_side"]))
    prior = corpus_prior(view)
    out = {"n_images": int(len(inf.logits)), "by_temperature": {}}
    for t in temperatures:
        mass = class_mass(importance_weights(inf.logits, prior, t), prior)
        by_ds, by_dom = aggregate_mass(mass, view.manifest["classes"])
        out["by_temperature"][str(t)] = {"datasets": rank_sources(by_ds), "domains": rank_sources(by_dom)}
    return out


def score(ranked: list[tuple[str, float]], related: list[str], k: int = 3) -> dict:
    top = [name for name, _ in ranked[:k]]
    hits = len(set(top) & set(related))
    mass = dict(ranked)
    r_hits = len({name for name, _ in ranked[:len(related)]} & set(related))
    return {"top": ranked[:k], "hits": hits, "precision": hits / k, "recall": hits / max(1, len(related)),
            "r_precision": r_hits / max(1, len(related)),
            "related_mass": float(sum(mass.get(r, 0.0) for r in related))}


def _fmt_t(t: float | None) -> str:
    return "uniform" if t is None else f"{t:g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR, help="cache dir for family/corpus/checkpoints")
    ap.add_argument("--min-side", type=int, default=32)
    ap.add_argument("--max-side", type=int, default=40)
    ap.add_argument("--cap", type=int, default=0, help="corpus images per class (0 = all; demo max is 300)")
    ap.add_argument("--max-downscale", type=float, default=16.0, help="corpus: patch images beyond this downscale")
    ap.add_argument("--epochs", type=int, default=8, help="source pretraining epochs")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--temperatures", default="1,2", help="comma list; 'none' = uniform")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    ap.add_argument("--seed", type=int, default=0, help="pretraining seed")
    ap.add_argument("--quick", action="store_true", help="3 epochs (a smoke run, numbers not for publishing)")
    ap.add_argument("--json", help="write all results here (default WORKDIR/selection_precision.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 3)
    temps = [None if s.strip().lower() in ("none", "inf") else float(s) for s in args.temperatures.split(",")]
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    fam = prepare_family(work)
    t_family = time.perf_counter() - t0
    t0 = time.perf_counter()
    corpus = prepare_corpus(work, fam, min_side=args.min_side, max_side=args.max_side, cap=args.cap or None,
                            max_downscale=args.max_downscale)
    t_corpus = time.perf_counter() - t0
    ckpt_dir = work / "ckpt" / f"select-source-{corpus.name}-e{args.epochs}-lr{args.lr:g}-s{args.seed}"
    ckpt, t_pre = pretrain(corpus, ckpt_dir, epochs=args.epochs, lr=args.lr, seed=args.seed,
                           splits=["train", "val"], threads=args.threads)
    from rtl.train.checkpoint import read_meta

    hist = read_meta(ckpt)["history"]
    acc = source_accuracy(ckpt, corpus, "test", args.threads)
    print(f"\nsource model: small_cnn, {args.epochs} epochs on corpus train+val rows "
          f"({args.min_side}/{args.max_side} px), final train loss {hist[-1]['train_loss']:.3f}; "
          f"held-out corpus test rows (n={acc['n']}): class top-1 {acc['class_top1']:.3f}, "
          f"dataset top-1 {acc['dataset_top1']:.3f}, industry top-1 {acc['industry_top1']:.3f}")

    relations = json.loads((fam / "relations.json").read_text())
    t0 = time.perf_counter()
    results = {}
    for tgt in sorted(p for p in (fam / "targets").iterdir() if p.is_dir()):
        results[tgt.name] = select_for_target(ckpt, corpus, tgt, temps, args.threads)
    t_select = time.perf_counter() - t0

    summary = {}
    for t in temps:
        key = str(t)
        print(f"\n## T = {_fmt_t(t)}: top-{args.k} source datasets by importance mass (class_mass summed per dataset)")
        print(f"| target | top-{args.k} (mass) | related | hits | precision@{args.k} | recall@{args.k} | "
              "R-precision | mass on related | top domain (mass) |")
        print("|---|---|---|---|---|---|---|---|---|")
        precs, recs, rprecs, rmass = [], [], [], []
        for name, r in results.items():
            related = relations[name]["related"]
            s = score(r["by_temperature"][key]["datasets"], related, args.k)
            r["by_temperature"][key]["score"] = s
            precs.append(s["precision"])
            recs.append(s["recall"])
            rprecs.append(s["r_precision"])
            rmass.append(s["related_mass"])
            top = ", ".join(f"{d} ({m:.2f})" for d, m in s["top"])
            dom, dmass = r["by_temperature"][key]["domains"][0]
            print(f"| {name} | {top} | {', '.join(related)} | {s['hits']} | {s['precision']:.3f} | "
                  f"{s['recall']:.3f} | {s['r_precision']:.3f} | {s['related_mass']:.3f} | {dom} ({dmass:.2f}) |")
        summary[key] = {"mean_precision": float(np.mean(precs)), "mean_recall": float(np.mean(recs)),
                        "mean_r_precision": float(np.mean(rprecs)),
                        "mean_related_mass": float(np.mean(rmass))}
        print(f"| **mean** | | | | **{np.mean(precs):.3f}** | **{np.mean(recs):.3f}** | **{np.mean(rprecs):.3f}** | "
              f"{np.mean(rmass):.3f} | |")
    total = time.perf_counter() - t_start
    train_s = sum(h["seconds"] for h in hist)
    print(f"\nruntime: this call {total:.1f} s (family {t_family:.1f}, corpus {t_corpus:.1f}, pretrain {t_pre:.1f}, "
          f"selection over {len(results)} targets {t_select:.1f}; cached steps ~0); pretraining epochs took "
          f"{train_s:.1f} s in total ({sum(h['images'] for h in hist) / max(train_s, 1e-9):.0f} images/s)")
    out = Path(args.json or work / "selection_precision.json")
    out.write_text(json.dumps({"settings": vars(args), "source_model": {"accuracy": acc, "history": hist},
                               "targets": results, "summary": summary,
                               "seconds": {"total": total, "family": t_family, "corpus": t_corpus,
                                           "pretrain": t_pre, "select": t_select}}, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
