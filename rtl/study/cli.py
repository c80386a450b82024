"""`rtl study run SPEC` / `rtl study report RESULTS`."""

from __future__ import annotations

import argparse
import os


def _run(args: argparse.Namespace) -> int:
    from rtl.study.runner import run_study
    from rtl.study.spec import load_study_spec

    overrides = {"workspace": os.path.abspath(args.workspace)} if args.workspace else None
    rd = run_study(load_study_spec(args.spec, overrides), address=args.address)
    if not args.no_report:
        from rtl.study.report import write_report

        print(f"report: {write_report(rd)}", flush=True)
    return 0


def _report(args: argparse.Namespace) -> int:
    from rtl.study.report import write_report

    print(f"report: {write_report(os.path.abspath(args.dir), log_mlflow=not args.no_mlflow)}")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser("study", help="measure which pretraining helps, with figures and a report")
    sub = study.add_subparsers(dest="study_verb", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("run", help="run (or continue) a study spec (studies/*.yaml): one Ray Tune trial per cell")
    p.add_argument("spec", help="study spec YAML, e.g. studies/demo.yaml")
    p.add_argument("--workspace", default=None, help="override the spec's workspace")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.set_defaults(func=_run)
    p = sub.add_parser("report", help="figures + one self-contained HTML report (also logged to MLflow)")
    p.add_argument("dir", help="results dir: <workspace>/studies/<study name>")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.set_defaults(func=_report)
