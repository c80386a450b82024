"""CLI verbs of the data area: `rtl synth`, `rtl dataset import|check` (`rtl corpus` is rtl.data.corpus_cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rtl.cliargs import seed
from rtl.errors import RtlError


def _synth(args: argparse.Namespace) -> int:
    from rtl.data.synth import format_summary, generate_family

    result = generate_family(Path(args.out), size=args.size, seed=args.seed, force=args.force)
    print(format_summary(result))
    print(f"wrote {args.out}/sources, {args.out}/targets, {args.out}/relations.json")
    return 0


def _import(args: argparse.Namespace) -> int:
    from rtl.data.adapters import import_dataset
    from rtl.data.convention import check_dataset
    from rtl.data.names import printable

    options = {}
    for kv in args.option or []:
        if "=" not in kv:
            raise RtlError(f"--option expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        options[k.strip().replace("-", "_")] = v
    domain = [d.strip() for d in args.domain.split(",") if d.strip()]
    dst = import_dataset(args.format, args.src, args.dst, name=args.name, domain=domain,
                         description=args.description, license=args.license, link=args.link, seed=args.seed,
                         **options)
    print(check_dataset(dst).summary())
    print(f"imported {printable(args.src)} -> {printable(dst)}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from rtl.data.convention import check_dataset

    report = check_dataset(Path(args.dst), deep=args.deep)
    for p in report.problems:
        print(p)
    print(report.summary())
    if not report.ok:
        print(f"{len(report.problems)} problem(s)", file=sys.stderr)
    return 0 if report.ok else 1


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="generate the synthetic inspection dataset family (no download)")
    p.add_argument("out", help="output folder (sources/, targets/, relations.json)")
    p.add_argument("--size", choices=["tiny", "demo", "full", "hard"], default="demo",
                   help="hard: >= 20 sources, 8 targets with related/harmful/unrelated ground truth (ranking)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder that is not a previous synth output of the same size and "
                        "seed (its dataset folders are replaced)")
    p.set_defaults(func=_synth)

    d = subparsers.add_parser("dataset", help="import or check a dataset folder")
    dsub = d.add_subparsers(dest="dataset_verb", metavar="ACTION")
    dsub.required = True

    from rtl.data.adapters import FORMATS

    imp = dsub.add_parser("import", help="convert class folders / CSV / Pascal VOC / COCO / YOLO into the rtl convention")
    imp.add_argument("--format", required=True, choices=FORMATS.names())
    imp.add_argument("src", help="source folder (or the CSV / COCO JSON file for --format csv / coco)")
    imp.add_argument("dst", help="new dataset folder")
    imp.add_argument("--name", required=True)
    imp.add_argument("--domain", required=True, help="comma-separated domain tags, e.g. pcb,smt")
    imp.add_argument("--description", default="")
    imp.add_argument("--license", default="")
    imp.add_argument("--link", action="store_true", help="hard-link images instead of copying")
    imp.add_argument("--seed", type=seed, default=0, help="seed of the hash-based splits")
    imp.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="adapter option, e.g. label_column=class (csv), default_label=good (voc/coco/yolo), "
                          "images=DIR (coco), names=FILE or unlabeled=skip (yolo)")
    imp.set_defaults(func=_import)

    chk = dsub.add_parser("check", help="report every problem of a dataset folder as file:line: message")
    chk.add_argument("dst")
    chk.add_argument("--deep", action="store_true", help="open every image header (sizes, modes)")
    chk.set_defaults(func=_check)

