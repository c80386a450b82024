"""LogME on a 10k x 512 feature matrix (10 classes): seconds, against a plain NumPy baseline measured in
the same run (the evidence-maximisation loop of You et al. 2021 written with one SVD per class and no
vectorisation tricks would be the naive version; here the baseline is a least-squares fit of the same
features, the cheapest thing a score over them can be). Moved out of the tests (issue 15: timing-only
"tests" belong in benchmarks).

    python benchmarks/logme_speed.py [--n 10000] [--d 512]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=512)
    args = ap.parse_args()
    from rtl.select.transferability import logme

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, args.n)
    f = rng.normal(size=(10, args.d))[labels] * 0.3 + rng.normal(size=(args.n, args.d))
    t0 = time.perf_counter()
    onehot = np.eye(10)[labels]
    np.linalg.lstsq(f, onehot, rcond=None)
    base = time.perf_counter() - t0
    t0 = time.perf_counter()
    v = logme(f, labels)
    dt = time.perf_counter() - t0
    assert math.isfinite(v)
    print(f"logme {args.n}x{args.d}, 10 classes: {dt:.3f} s; least-squares baseline {base:.3f} s; "
          f"ratio logme/baseline {dt / base:.2f}")


if __name__ == "__main__":
    main()
