"""`rtl predict` throughput, timed as a user runs it, against a plain PyTorch loop over the same files.

    .venv/bin/python benchmarks/predict.py [--n 2000] [--side 64] [--model small_cnn] [--rounds 3]

1. Generates (once, cached in --dir) N images of 200-300 px (JPEG and PNG, colour and gray, textured like
   inspection crops) and a random-weight model folder of `--model` at sides `--side`..`--side`+8
   (throughput does not depend on the weights).
2. Each round runs, each as a new process, in alternating order:
   * `rtl predict MODEL IMAGES --out preds.csv` with `--engine ray` (Ray start, actor pool, Ray Data),
     and with `--engine local` (the in-process loop);
   * the plain loop a user would write: import torch, load the model folder, then for each batch of 64
     files decode + preprocess with rtl's own functions (the work is the same) and run the model under
     `torch.no_grad()`, torch's default threads, write a CSV.
3. Prints each arm's median wall time, img/s, the ratio (issue 11 target on 2 cores: >= 1.5x for >= 2k
   images, Ray start included) and the load average at the start of the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_images(root: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    imgs = root / f"images_{n}"
    if imgs.is_dir() and len([p for p in imgs.iterdir() if p.is_file()]) == n:
        return imgs
    imgs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(200, 301, 2))
        yy, xx = np.mgrid[0:h, 0:w]
        base = (np.sin(xx / rng.uniform(4, 30)) + np.cos(yy / rng.uniform(4, 30))) * 45 + 128
        gray = i % 4 == 0
        img = np.clip((base if gray else base[..., None]) + rng.normal(0, 10, (h, w) if gray else (h, w, 3)),
                      0, 255).astype(np.uint8)
        if i % 3 == 0:
            Image.fromarray(img).save(imgs / f"{i:05d}.png", compress_level=6)
        else:
            Image.fromarray(img).save(imgs / f"{i:05d}.jpg", quality=90)
    return imgs


def make_model(root: Path, model: str, side: int) -> Path:
    import torch

    from rtl.deliver.model import save_model_dir
    from rtl.models.backbones import create_model

    mdir = root / f"model_{model}_{side}"
    if not (mdir / "meta.json").is_file():
        torch.manual_seed(0)
        save_model_dir(mdir, create_model(model, 4), classes=["ok", "a", "b", "c"], min_side=side,
                       max_side=side + 8)
    return mdir


def plain_loop(model_dir: str, images: str, out: str, batch_size: int) -> dict:
    """What a user writes without `rtl predict`: one process, torch's default threads."""
    t0 = time.perf_counter()
    import torch

    from rtl.data.transforms import DecodeError, decode_fit
    from rtl.deliver.model import load_model_dir, prepare_image

    lm = load_model_dir(model_dir)
    pre = lm.preprocess
    files = sorted(p for p in Path(images).iterdir() if p.is_file())
    rows = []
    with torch.no_grad():
        for s in range(0, len(files), batch_size):
            xs, names = [], []
            for f in files[s:s + batch_size]:
                try:
                    xs.append(prepare_image(decode_fit(f, int(pre["min_side"]), int(pre["max_side"])), pre))
                    names.append(f.name)
                except DecodeError:
                    continue
            if xs:
                p = torch.softmax(lm.model(torch.stack(xs)), 1).numpy()
                rows += [f"{n},{','.join(f'{v:.6f}' for v in pr)}" for n, pr in zip(names, p)]
    Path(out).write_text("path," + ",".join(lm.classes) + "\n" + "\n".join(rows) + "\n")
    return {"n": len(rows), "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}


def _run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return wall, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--arms", default="ray,local,plain", help="comma-separated: ray, local, plain")
    ap.add_argument("--dir", default="/tmp/rtl-bench-predict")
    ap.add_argument("--plain", nargs=3, metavar=("MODEL", "IMAGES", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        print(json.dumps(plain_loop(*args.plain, batch_size=args.batch_size)))
        return
    root = Path(args.dir)
    imgs = make_images(root, args.n)
    mdir = make_model(root, args.model, args.side)
    rtl = str(Path(sys.executable).with_name("rtl"))
    cmds = {
        "ray": [rtl, "predict", str(mdir), str(imgs), "--out", str(root / "ray.csv"), "--engine", "ray",
                "--batch-size", str(args.batch_size)],
        "local": [rtl, "predict", str(mdir), str(imgs), "--out", str(root / "local.csv"), "--engine", "local",
                  "--batch-size", str(args.batch_size)],
        "plain": [sys.executable, __file__, "--plain", str(mdir), str(imgs), str(root / "plain.csv"),
                  "--batch-size", str(args.batch_size)],
    }
    arms = [a for a in args.arms.split(",") if a]
    walls: dict[str, list[float]] = {a: [] for a in arms}
    loads, notes = [], {}
    for r in range(args.rounds):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            loads.append(os.getloadavg()[0])
            wall, out = _run(cmds[arm])
            walls[arm].append(wall)
            notes[arm] = out.strip().splitlines()[-1] if out.strip() else ""
            print(f"round {r} {arm:5s}: {wall:6.1f} s  (load {loads[-1]:.1f})  {notes[arm][:110]}", flush=True)
    print(f"\n{args.n} images 200-300 px (JPEG+PNG) -> {args.model} at {args.side} px, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, load average {min(loads):.1f}-{max(loads):.1f} at the run starts")
    med = {a: statistics.median(v) for a, v in walls.items()}
    for a in arms:
        print(f"  {a:5s}: median {med[a]:6.1f} s = {args.n / med[a]:6.1f} img/s (runs "
              f"{', '.join(f'{t:.1f}' for t in walls[a])})")
    if "plain" in med:
        for a in arms:
            if a != "plain":
                print(f"  {a} vs plain loop: {med['plain'] / med[a]:.2f}x  [issue 11 target for ray: >= 1.5x]")


if __name__ == "__main__":
    main()
