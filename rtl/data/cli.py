"""CLI verbs of the data area: `rtl synth`, `rtl dataset import|check` (`rtl corpus` is rtl.data.corpus_cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rtl.cliargs import deprecated, seed, tags
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
    dst = import_dataset(args.format, args.src, args.dst, name=args.name, domain=args.domains,
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
    p = subparsers.add_parser("synth", help="synthetic inspection datasets to try rtl on (no download)",
                              description=_synth_doc())
    p.add_argument("out", help="output folder (sources/, targets/, relations.json)")
    p.add_argument("--size", choices=["tiny", "demo", "full", "hard"], default="demo",
                   help="family size; hard: >= 20 sources, 8 targets with related/harmful/unrelated ground truth")
    p.add_argument("--seed", type=seed, default=0, help="seed of every generated image and split")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder that is not a previous synth output of the same size and "
                        "seed (its dataset folders are replaced)")
    p.set_defaults(func=_synth)

    d = subparsers.add_parser("dataset", help="import your image datasets into rtl's layout, or check one")
    dsub = d.add_subparsers(dest="dataset_verb", metavar="ACTION")
    dsub.required = True

    from rtl.data.adapters import FORMATS

    imp = dsub.add_parser("import", help="convert class folders / CSV / Pascal VOC / COCO / YOLO into the rtl convention")
    imp.add_argument("--format", required=True, choices=FORMATS.names(), help="layout of the source")
    imp.add_argument("src", help="source folder (or the CSV / COCO JSON file for --format csv / coco)")
    imp.add_argument("dst", help="new dataset folder")
    imp.add_argument("--name", required=True, help="dataset name ([A-Za-z0-9_-]+)")
    imp.add_argument("--domains", required=True, type=tags, metavar="A,B", help="domain tags, e.g. pcb,smt")
    imp.add_argument("--description", default="", help="free text for dataset.yaml")
    imp.add_argument("--license", default="", help="license of the images, for dataset.yaml")
    imp.add_argument("--link", action="store_true", help="hard-link images instead of copying")
    imp.add_argument("--seed", type=seed, default=0, help="seed of the hash-based splits")
    imp.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="adapter option, e.g. label_column=class (csv), default_label=good (voc/coco/yolo), "
                          "images=DIR (coco), names=FILE or unlabeled=skip (yolo)")
    deprecated(imp, "--domain", "--domains")
    imp.set_defaults(func=_import)

    chk = dsub.add_parser("check", help="report every problem of a dataset folder as file:line: message")
    chk.add_argument("dst", help="dataset folder")
    chk.add_argument("--deep", action="store_true", help="open every image header (sizes, modes)")
    chk.set_defaults(func=_check)



def _synth_doc() -> str:
    return ("Writes a family of small synthetic inspection datasets (sources and held-out targets in the rtl\n"
            "dataset convention) and relations.json, the ground truth of which sources help which target.\n\n"
            "    rtl synth data/ --size demo --seed 0")
