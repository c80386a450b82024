"""The `rtl` command. Thin: each area adds its verbs from its own `cli` module; errors print as one line."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rtl.cliargs import check_combinations
from rtl.errors import RtlError

# Each module exposes `add_parsers(subparsers)`; every sub-parser sets `func=callable(args) -> int | None`.
_AREAS = ["rtl.data.cli", "rtl.data.corpus_cli", "rtl.train.cli", "rtl.train.pretrain_cli", "rtl.select.cli", "rtl.select.rank_cli", "rtl.sweep.cli", "rtl.demo", "rtl.deliver.cli", "rtl.study.cli"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtl", description=__doc__)
    from rtl import __version__

    parser.add_argument("--version", action="version", version=f"rtl {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
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
