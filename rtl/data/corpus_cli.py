"""`rtl corpus build|info`: build the source corpus (a local process pool or Ray), or summarise one."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from rtl.cliargs import deprecated, downscale, names, nonneg_float, nonneg_int, positive_int, seed, side
from rtl.data.corpus_local import ENGINES
from rtl.errors import RtlError


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("corpus", help="pool your source datasets into one pretraining corpus")
    sub = p.add_subparsers(dest="corpus_verb", metavar="ACTION")
    sub.required = True

    b = sub.add_parser("build", help="decode, undersample and size-normalise datasets into Parquet shards")
    b.add_argument("datasets", nargs="+", metavar="DATASET_DIR", help="dataset folders (see `rtl dataset`)")
    b.add_argument("--out", required=True, metavar="CORPUS", help="corpus folder (reuses its class table)")
    b.add_argument("--min-side", type=side, default=224, help="smallest image side after resizing (px)")
    b.add_argument("--max-side", type=side, default=256, help="largest image side after resizing (px)")
    b.add_argument("--cap", type=nonneg_int, default=1000, help="images kept per class; 0 = all")
    b.add_argument("--seed", type=seed, default=0, help="undersampling / patch seed")
    b.add_argument("--rgb", action="store_true", help="store gray images as 3 channels")
    b.add_argument("--max-patches", type=positive_int, default=8, help="patches per very large image")
    b.add_argument("--max-downscale", type=downscale, default=8.0,
                   help="patch-crop images that would shrink by more than this")
    b.add_argument("--min-defect-px", type=nonneg_float, default=6.0,
                   help="patch-crop images whose smallest VOC box would shrink below this many px; 0 = off")
    b.add_argument("--class-table", metavar="PATH", help="manifest.json / corpus dir whose class ids to keep")
    b.add_argument("--engine", default="auto", choices=ENGINES,
                   help="local process pool, Ray tasks, or auto (Ray when a Ray is addressed or running)")
    b.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray; "
                                     "implies --engine ray under auto)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_build)

    i = sub.add_parser("info", help="class table, counts, rejects and version of a corpus")
    i.add_argument("corpus", metavar="CORPUS", help="corpus folder")
    i.add_argument("--domains", type=names, metavar="A,B", help="only datasets with these domain tags")
    i.add_argument("--datasets", type=names, metavar="A,B", help="only these datasets")
    i.add_argument("--split", action="append", choices=["train", "val", "test"], help="only this split (repeatable)")
    deprecated(i, "--domain", "--domains", extend=True)
    i.set_defaults(func=_info)


def _build(args: argparse.Namespace) -> int:
    from rtl.data.corpus_build import build_corpus

    if args.cap < 0:
        raise RtlError(f"--cap must be >= 0, got {args.cap}")
    out = Path(args.out).absolute()  # resolved here, on the driver: Ray workers may have another cwd
    m = build_corpus(args.datasets, out, min_side=args.min_side, max_side=args.max_side,
                     cap=args.cap or None, seed=args.seed, keep_gray=not args.rgb,
                     class_table=args.class_table, address=args.address, max_patches=args.max_patches,
                     max_downscale=args.max_downscale, min_defect_px=args.min_defect_px,
                     progress=not args.quiet, engine=args.engine)
    print(summary(m, out))
    return 0


def summary(m: dict, out: Path | None = None) -> str:
    """One screen: images in/kept/out, rejects by reason, classes, time, version."""
    reasons = Counter("label row dropped" if r["path"].startswith("labels.csv:") else r["reason"].split(":")[0]
                      for r in m.get("rejects", []))
    lines = [f"corpus {out or ''}  version {m['version']}",
             f"  datasets {len(m.get('datasets', {}))}  classes {len(m.get('classes', []))}  "
             f"(empty: {len(m.get('empty_classes', []))})",
             f"  images: {m.get('n_images_in', '?')} listed, {m.get('n_images_kept', '?')} kept by cap "
             f"{(m.get('params') or {}).get('cap')}, {m.get('n_images_ok', '?')} decoded -> {m.get('n_rows_out', '?')} rows "
             f"in {len(m.get('shards', []))} shards",
             f"  sizes before: {_fmt_hist(m.get('size_hist_before', {}))}",
             f"  sizes after:  {_fmt_hist(m.get('size_hist_after', {}))}",
             f"  rejects: {len(m.get('rejects', []))}" + ("" if not reasons else "  (" + ", ".join(
                 f"{k}: {n}" for k, n in reasons.most_common(8)) + ")")]
    if m.get("warnings"):
        lines.append(f"  warnings: {len(m['warnings'])} (see manifest.json)")
    t = m.get("timings", {})
    parts = [f"{k} {t[k]:.1f}s" for k in ("labels", "ray_init", "process", "finalize") if k in t]
    if t.get("head_start_images"):
        parts.insert(2, f"{int(t['head_start_images'])} images decoded by the driver while Ray started")
    if t.get("process") and t.get("decode_workers"):
        parts.append(f"decode parallelism {t.get('decode_task_seconds', 0) / t['process']:.2f} "
                     f"over {t.get('decode_workers', '?')} workers")
    if t.get("engine"):
        parts.insert(0, f"{t['engine']} engine")
    lines.append(f"  time: {m.get('seconds', 0):.1f}s  (" + ", ".join(parts) + ")")
    return "\n".join(lines)


def _fmt_hist(h: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in h.items()) or "-"


def _info(args: argparse.Namespace) -> int:
    from rtl.data.corpus_view import open_corpus

    view = open_corpus(args.corpus, datasets=args.datasets, domains=args.domains, splits=args.split)
    m = view.manifest
    print(summary(m, Path(args.corpus)))
    counts = view.class_counts()
    before = m.get("counts_before", {})
    print(f"\nview: {', '.join(view.datasets) or '-'}  ({len(view)} rows, {len(view.class_ids)} of "
          f"{view.num_classes} classes)")
    w = max([7, *(len(c["dataset"]) for c in m["classes"])])
    print(f"  {'id':>4}  {'dataset':<{w}}  {'label':<16} {'listed':>7} {'rows':>7}")
    for c in m["classes"]:
        if c["id"] in counts:
            print(f"  {c['id']:>4}  {c['dataset']:<{w}}  {c['label']:<16} {before.get(str(c['id']), 0):>7} "
                  f"{counts[c['id']]:>7}")
    return 0
