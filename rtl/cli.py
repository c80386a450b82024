"""The `rtl` command. Thin: each area adds its verbs from its own `cli` module; errors print as one line."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rtl.errors import RtlError

# Each module exposes `add_parsers(subparsers)`; every sub-parser sets `func=callable(args) -> int | None`.
_AREAS = ["rtl.data.cli", "rtl.data.corpus_cli", "rtl.train.cli", "rtl.train.pretrain_cli", "rtl.select.cli", "rtl.sweep.cli", "rtl.demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtl", description=__doc__)
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
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except RtlError as e:
        print(f"rtl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rtl: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
