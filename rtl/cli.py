"""rtl: find which source image datasets to pretrain on for your inspection task, pretrain on them and
fine-tune the result on your target, with Ray on one machine or a cluster.

Start with `rtl demo` (everything on built-in synthetic data), or with your own data:
dataset import -> corpus build -> pretrain / rank / select -> sweep run -> sweep export -> predict.
`rtl VERB --help` shows every option of a verb with its default."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rtl.cliargs import RtlParser, check_combinations
from rtl.errors import RtlError

# Each module exposes `add_parsers(subparsers)`; every sub-parser sets `func=callable(args) -> int | None`.
# Building them imports no torch / Ray (options that need a config module are added on first use).
_AREAS = ["rtl.data.cli", "rtl.data.corpus_cli", "rtl.train.pretrain_cli", "rtl.train.finetune_cli",
          "rtl.select.cli", "rtl.select.rank_cli", "rtl.sweep.cli", "rtl.deliver.cli", "rtl.study.cli", "rtl.demo"]

EXAMPLES = """examples:
  rtl demo                       # synthetic data -> corpus -> sweep -> report
  rtl dataset import --format imagefolder raw/pcb data/pcb --name pcb --domains pcb
  rtl corpus build data/sources/* --out corpus/
  rtl pretrain --corpus corpus/ --backbone resnet18 --workers 2 --out ckpt/src
  rtl rank --target data/targets/target_pcb --corpus corpus/ --generalist ckpt/src
  rtl select weights --target data/targets/target_pcb --checkpoint ckpt/src --corpus corpus/ --out weights.json
  rtl finetune --target data/targets/target_pcb --init ckpt/src --seeds 0,1,2
  rtl sweep run sweeps/demo.yaml && rtl sweep export demo-workspace/demo --target target_pcb --out models/pcb
  rtl predict models/pcb images/ --out preds.csv

exit codes: 0 ok, 2 bad input or options (one line `rtl: error: ...`), 1 runtime failure, 130 Ctrl-C"""


def build_parser() -> argparse.ArgumentParser:
    parser = RtlParser(prog="rtl", description=__doc__, epilog=EXAMPLES)
    from rtl import __version__

    parser.add_argument("--version", action="version", version=f"rtl {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=RtlParser)
    sub.required = True
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # an area not built yet must not break the others
            if e.name == name:
                continue
            raise
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Exit codes (README): 0 ok; 2 usage or input error (argparse, `RtlError`); 1 runtime
    failure (`RtlRuntimeError`: errored trials, unreachable cluster/service; an uncaught bug exits 1 too);
    130 Ctrl-C."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ctrl-C: Ray Tune's own SIGINT handler ends the running experiment "gracefully" and returns as if it
    # had finished, so a sweep went on to its next target and exited 0. Without it Ctrl-C interrupts the
    # driver at once (exit 130); `rtl sweep resume` continues from the last experiment checkpoint.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)  # option values are checked here (rtl.cliargs): exit 2
        problem = check_combinations(args)
        if problem:
            print(f"rtl: error: {problem}", file=sys.stderr)
            return 2
        rc = args.func(args)
    except RtlError as e:
        from rtl.data.names import printable  # one line even for a path with a newline or non-UTF-8 bytes

        print(f"rtl: error: {printable(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("rtl: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
