"""Option value checks for every `rtl` verb, applied by argparse at parse time (`type=` callables).

Why: a bad number (`--max-patches 0`, `--port 99999`, `--epochs -3`, `--lr nan`) used to travel into
Ray or MLflow and come back as a traceback, sometimes after minutes of work. argparse turns the
`ArgumentTypeError` raised here into `rtl <verb>: error: argument --x: <message>` and exit code 2,
before anything is written or started. Checks between options (`--min-side` <= `--max-side`) run
right after parsing in `check_combinations`, called by `rtl.cli.main`.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
from collections.abc import Callable

SEED_MAX = 2**32 - 1  # numpy's legacy seeding and most samplers accept [0, 2**32)


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def int_range(lo: int, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """An argparse `type=` accepting integers in [lo, hi] (hi None: no upper bound)."""

    def check(text: str) -> int:
        v = _int(text)
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"{what or 'must be an integer'} {rng}, got {v}".strip())
        return v

    check.__name__ = f"int_range_{lo}_{hi}"
    return check


def float_range(lo: float, hi: float | None = None, *, lo_open: bool = False,
                what: str = "must be a number") -> Callable[[str], float]:
    """An argparse `type=` accepting finite floats in [lo, hi] (or (lo, hi] with lo_open)."""

    def check(text: str) -> float:
        v = _float(text)
        if (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
            left = ">" if lo_open else ">="
            rng = f"{left} {lo:g}" if hi is None else f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise argparse.ArgumentTypeError(f"{what} {rng}, got {text}")
        return v

    check.__name__ = f"float_range_{lo}_{hi}"
    return check


positive_int = int_range(1, what="must be an integer")  # counts that must exist: epochs, batch, workers
nonneg_int = int_range(0, what="must be an integer")            # counts where 0 means none / off
seed = int_range(0, SEED_MAX, what="seed must be")
port = int_range(1, 65535, what="port must be")
positive_float = float_range(0.0, lo_open=True)                  # learning rates
nonneg_float = float_range(0.0)                                   # weight decay, regularizer strengths
fraction = float_range(0.0, 1.0, lo_open=True)                    # shares of a mass
downscale = float_range(1.0, what="a shrink factor must be")      # 1 = never shrink (always patch)
# Image sides: small_cnn, the smallest backbone, max-pools 8x, so an 8 px image reaches its last stage as
# a single pixel (and an 8 px patch holds no defect detail); 16 px still leaves it a 2x2 map.
MIN_SIDE = 16
side = int_range(MIN_SIDE, what="image side (px) must be")


def seed_list(text: str) -> list[int]:
    """Comma-separated seeds, e.g. `0,1,2` (each a `seed`)."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one seed, e.g. 0,1,2")
    return [seed(t.strip()) for t in items]


def host_address(text: str) -> str:
    """An IP address to listen on (`localhost` = 127.0.0.1); names are refused so loopback is decidable."""
    if text.strip().lower() == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IP address (e.g. 127.0.0.1 or 0.0.0.0), got {text!r}") from None


def check_combinations(args: argparse.Namespace) -> str | None:
    """A problem between options of one verb (one line), or None. Runs before the verb does anything."""
    lo, hi = getattr(args, "min_side", None), getattr(args, "max_side", None)
    if lo is not None and hi is not None and lo > hi:
        return f"--min-side ({lo}) must be <= --max-side ({hi})"
    return None

