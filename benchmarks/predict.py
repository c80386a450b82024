"""`rtl predict` throughput: Ray Data batch inference vs a plain PyTorch loop over the same files.

    .venv/bin/python benchmarks/predict.py [--n 2000] [--side 224] [--model small_cnn] [--rounds 2]

1. Generates (once, cached in --dir) N PNG images of `side`..`side`+40 px (colour, noisy, so decoding
   costs what real inspection images cost) and a random-weight model folder of `--model` (throughput
   does not depend on the weights).
2. Times, interleaved over rounds, the in-process loop engine (`--engine local`: decode + preprocess +
   forward, one process) and the Ray Data engine (`--engine ray`: an actor pool of one actor per CPU,
   each decoding and predicting its batches) on a Ray started beforehand (start-up reported separately).
3. Prints img/s medians and the ratio (target on 2 cores: >= 1.5x for >= 2k images).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from rtl.deliver.model import load_model_dir, save_model_dir  # noqa: E402
from rtl.deliver.predict import collect_inputs, predict  # noqa: E402
from rtl.models.backbones import create_model  # noqa: E402


def make_images(root: Path, n: int, side: int) -> Path:
    imgs = root / f"images_{n}_{side}"
    if imgs.is_dir() and len(list(imgs.glob("*.png"))) == n:
        return imgs
    imgs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = int(rng.integers(side, side + 41)), int(rng.integers(side, side + 41))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(imgs / f"{i:05d}.png")
    return imgs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dir", default="/tmp/rtl-bench-predict")
    args = ap.parse_args()
    root = Path(args.dir)
    imgs = make_images(root, args.n, args.side)
    mdir = root / f"model_{args.model}_{args.side}"
    torch.manual_seed(0)
    save_model_dir(mdir, create_model(args.model, 4), classes=["ok", "a", "b", "c"], min_side=args.side,
                   max_side=args.side + 32)
    lm = load_model_dir(mdir)
    items = collect_inputs(imgs)
    torch.set_num_threads(1)  # the loop gets one core, as each Ray actor does

    import ray

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - t0
    cpus = int(ray.available_resources().get("CPU", 1))
    rates: dict[str, list[float]] = {"local": [], "ray": []}
    for r in range(args.rounds):
        for engine in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
            p = predict(lm, items, engine=engine, batch_size=args.batch_size)
            rates[engine].append(len(items) / p.seconds)
            print(f"round {r} {engine:5s}: {rates[engine][-1]:7.1f} img/s", flush=True)
    loc, ray_r = statistics.median(rates["local"]), statistics.median(rates["ray"])
    print(f"\n{args.n} images {args.side}-{args.side + 40} px, {args.model}, {cpus} CPUs (Ray start {ray_start:.1f} s, "
          f"not counted)\n  local loop: {loc:7.1f} img/s\n  Ray Data:   {ray_r:7.1f} img/s\n  ratio:      {ray_r / loc:.2f}x")


if __name__ == "__main__":
    main()
