"""`rtl predict` (a model folder or `models:/name@alias` on new images) and `rtl sweep export`."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from rtl.artifacts.checkpoint import META_FILE
from rtl.errors import RtlError


def _load(model: str, tracking_uri: str | None, workdir: str):
    from rtl.deliver.model import load_model_dir

    if model.startswith("models:/"):
        from rtl.sweep.tracking import download_registered_model

        return load_model_dir(download_registered_model(model, workdir, tracking_uri=tracking_uri))
    return load_model_dir(model)


def check_out_dir(out) -> None:
    """A model folder is written to a new path or over an existing model folder, never over other files."""
    from pathlib import Path

    out = Path(out)
    if out.exists() and not (out.is_dir() and (out / META_FILE).is_file()):
        raise RtlError(f"--out {out}: exists and is not a model folder; choose a new path")


def save_finetune_out(out, cfg, summary, *, ok_class: str | None = None):
    """`rtl finetune --out DIR`: the seed with the lowest val error becomes a model folder."""
    from rtl.deliver.finetuned import finetune_model_folder
    from rtl.deliver.metrics import format_metrics

    best = min(summary.results, key=lambda r: (r.val_error, r.seed))
    path, m = finetune_model_folder(out, cfg, best, ok_class=ok_class,
                                    provenance={"seeds_run": [r.seed for r in summary.results]})
    split = m["eval_split"]
    shown = format_metrics({k[len(split) + 1:]: v for k, v in m.items() if k.startswith(f"{split}_")})
    print(f"model (seed {best.seed}): {path}\n  {split}: {shown}")
    return path


def cmd_predict(args: argparse.Namespace) -> int:
    from rtl.deliver.metrics import format_metrics
    from rtl.deliver.model import find_ok_class
    from rtl.deliver.predict import collect_inputs, labelled_metrics, predict, to_frame, write_outputs

    if args.batch_size < 1:
        raise RtlError("--batch-size must be >= 1")
    items = collect_inputs(args.images, split=args.split)
    with tempfile.TemporaryDirectory(prefix="rtl-model-") as work:
        lm = _load(args.model, args.tracking_uri, work)
    ok = find_ok_class(lm.classes, args.ok_class) if args.ok_class else lm.meta.get("ok_class")
    pred = predict(lm, items, engine=args.engine, batch_size=args.batch_size, address=args.address,
                   gpus=args.gpus, actors=args.actors)
    out, rej = write_outputs(to_frame(pred, lm.classes, ok), pred.rejects, args.out)
    rate = len(items) / pred.seconds if pred.seconds > 0 else float("inf")
    share = f", {pred.by_driver} by the driver while Ray started" if pred.by_driver else ""
    print(f"predicted {len(pred.items)} image(s) -> {out} ({pred.engine}{share}, {rate:.1f} img/s)")
    if rej is not None:
        print(f"rejected {len(pred.rejects)} unreadable image(s) -> {rej}", file=sys.stderr)
    m = labelled_metrics(pred, lm.classes, ok)
    if m is not None:
        print(f"on the given labels: {format_metrics(m)}")
    if not pred.items:
        raise RtlError(f"{args.images}: none of the {len(items)} image(s) could be decoded (see {rej})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from rtl.sweep.deliver import export_best

    out = export_best(os.path.abspath(args.dir), args.target, args.out, seed=args.seed)
    print(f"model: {out}")
    return 0


def add_export_parser(sweep_sub: argparse._SubParsersAction) -> None:
    """`rtl sweep export RESULTS --target T --out DIR` (added to the `sweep` verb by rtl.sweep.cli)."""
    p = sweep_sub.add_parser("export", help="copy the best model of a target out of a sweep (a model folder)")
    p.add_argument("dir", help="results dir: <workspace>/<sweep name>")
    p.add_argument("--target", required=True, help="target name (its folder name)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--seed", type=int, default=None, help="which seed's model of the best configuration "
                                                          "(default: the one with the lowest val error)")
    p.set_defaults(func=cmd_export)


def _module_doc(name: str) -> str | None:
    """A module's docstring without importing it (rtl.deliver.predict imports torch: +0.6 GB and seconds
    for every `rtl` verb when the parser is built; issue 13)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(name)
    with open(spec.origin, encoding="utf-8") as fh:
        return ast.get_docstring(ast.parse(fh.read()))


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="classify new images with a trained model -> CSV/Parquet",
                              description=_module_doc("rtl.deliver.predict"))  # formatter: rtl.cliargs
    p.add_argument("model", help="model folder (rtl finetune --out / rtl sweep export) or models:/<name>@<alias>")
    p.add_argument("images", help="folder of images, dataset folder (rtl convention) or CSV with an 'image' column")
    p.add_argument("--out", required=True, help="predictions file (.csv or .parquet); rejects go to <out>.rejects.csv")
    p.add_argument("--split", default=None, help="only this split of a dataset folder (train/val/test)")
    p.add_argument("--engine", default="auto", choices=("auto", "local", "ray"),
                   help="local loop, Ray Data batch inference, or auto (Ray for large inputs)")
    p.add_argument("--batch-size", type=int, default=64, help="images per inference batch")
    p.add_argument("--actors", type=int, default=None, help="Ray Data actor pool size (default: CPUs)")
    p.add_argument("--gpus", type=float, default=0, help="GPUs for the Ray actor pool (0 = CPU)")
    p.add_argument("--address", default=None, help="Ray cluster address (implies --engine ray under auto)")
    p.add_argument("--ok-class", default=None, help="name of the good/ok class (default: from the model folder)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ (default MLFLOW_TRACKING_URI)")
    p.set_defaults(func=cmd_predict)
