"""`rtl sweep run|status|resume|report` and `rtl ui` (MLflow UI on the sweep's tracking store)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys

from rtl.cliargs import host_address, port
from rtl.errors import RtlError, RtlRuntimeError


def _run(args: argparse.Namespace) -> int:
    from rtl.sweep.runner import run_sweep
    from rtl.sweep.spec import load_spec

    overrides = {"workspace": os.path.abspath(args.workspace)} if args.workspace else None
    spec = load_spec(args.spec, overrides)
    if args.dry_run:  # every check of a run, nothing written, nothing started (issue 12)
        from rtl.sweep.preflight import preflight

        print(preflight(spec, address=args.address).format() + "\ndry run: nothing written, nothing started")
        return 0
    run_sweep(spec, address=args.address)
    return 0


def _resume(args: argparse.Namespace) -> int:
    from rtl.sweep.runner import resume_sweep

    resume_sweep(os.path.abspath(args.dir), address=args.address)
    return 0


def _status(args: argparse.Namespace) -> int:
    from rtl.sweep.status import format_status, sweep_status

    print(format_status(sweep_status(os.path.abspath(args.dir))))
    return 0


def _report(args: argparse.Namespace) -> int:
    from rtl.report.sweep import write_report

    out = write_report(os.path.abspath(args.dir), log_mlflow=not args.no_mlflow)
    print(f"report: {out}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from rtl.artifacts.tracking import default_tracking_uri

    ws = os.path.abspath(args.workspace)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        dbs = [ws] if os.path.exists(os.path.join(ws, "mlflow.db")) else sorted(
            os.path.join(ws, d) for d in os.listdir(ws) if os.path.exists(os.path.join(ws, d, "mlflow.db"))
        ) if os.path.isdir(ws) else []
        if len(dbs) != 1:
            raise RtlError(f"{ws}: " + ("no mlflow.db found (pass a sweep results dir)" if not dbs else
                                        f"several sweeps ({', '.join(map(os.path.basename, dbs))}); pass one"))
        ws = dbs[0]
    uri = default_tracking_uri(ws)
    host = args.host
    if not ipaddress.ip_address(host).is_loopback:  # issue 17: reachable from the network only when asked
        print(f"rtl: warning: the MLflow UI will listen on {host}:{args.port}: anyone who can reach this "
              f"machine there can read and change the sweep's runs (no authentication); the default "
              f"127.0.0.1 plus an SSH port-forward is safer", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
           "--port", str(args.port)]
    shown = f"[{host}]" if ":" in host else host
    print(f"MLflow UI: http://{shown}:{args.port}  ({uri})", flush=True)
    rc = subprocess.call(cmd)
    if rc < 0 and -rc == signal.SIGINT:
        raise KeyboardInterrupt
    if rc:
        raise RtlRuntimeError(f"the MLflow UI exited with status {rc} (is port {args.port} already in use?)")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser("sweep", help="search sources x fine-tuning per target: the best model")
    sub = sweep.add_subparsers(dest="sweep_verb", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("run", help="run a sweep spec (sweeps/*.yaml)")
    p.add_argument("spec", help="sweep spec YAML, e.g. sweeps/demo.yaml")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--workspace", default=None, help="override the spec's workspace")
    p.add_argument("--dry-run", action="store_true",
                   help="check the spec, paths, resources and storages, print the plan; write nothing")
    p.set_defaults(func=_run)
    for name, fn, hlp in (("resume", _resume, "continue a sweep after Ctrl-C, a crash or a lost node"),
                          ("status", _status, "trials done / running / pruned per target, best so far"),
                          ("report", _report, "Markdown + PNG report, also logged to MLflow")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("dir", help="results dir: <workspace>/<sweep name>")
        if name == "resume":
            p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
        if name == "report":
            p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
        p.set_defaults(func=fn)
    from rtl.deliver.cli import add_export_parser  # `rtl sweep export` (issue 11)

    add_export_parser(sub)
    ui = subparsers.add_parser("ui", help="browse a sweep's runs and models in the MLflow UI")
    ui.add_argument("--workspace", default=".", help="sweep results dir (or a workspace with one sweep)")
    ui.add_argument("--port", type=port, default=5000, help="port to listen on")
    ui.add_argument("--host", type=host_address, default="127.0.0.1",
                    help="address to listen on (another than loopback prints a warning)")
    ui.set_defaults(func=_ui)
