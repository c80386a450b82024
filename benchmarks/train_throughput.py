"""Pretraining throughput: Ray Train (DDP) vs a plain single-process PyTorch loop, same run.

Same model, corpus, global batch and total thread count (default 2):
  local   : pretrain_local, 1 process x 2 torch threads (the baseline)
  ray 1x2 : run_pretrain, 1 Ray Train worker x 2 CPUs
  ray 2x1 : run_pretrain, 2 Ray Train workers x 1 CPU (gloo all-reduce)
Throughput = images / second of the last training epoch as measured inside the loop (startup
excluded; wall-clock including Ray start-up is printed too). Target: Ray >= 0.85x local on CPU.

Peak memory: a /proc sampler sums RSS and PSS of this process and every descendant (Ray workers, raylet, GCS; RSS counts shared pages once per process and over-estimates, PSS does not) during the Ray runs on a
demo-sized corpus. Target: < 4 GiB.

    .venv/bin/python benchmarks/train_throughput.py [--rows 3000 --side 64 --model small_cnn --epochs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def write_corpus(root: Path, rows: int, side: int, classes: int = 20, seed: int = 0) -> Path:
    """Demo-like corpus: `classes` classes over 4 datasets, RGB + gray images, sides in [side, side+side/8]."""
    rng = np.random.default_rng(seed)
    table = [{"id": i, "dataset": f"d{i % 4}", "label": f"c{i}", "domain": ["pcb" if i % 2 else "metal"]}
             for i in range(classes)]
    cols: dict[str, list] = {k: [] for k in ("pixels", "height", "width", "channels", "class_id", "dataset",
                                              "label", "source_path", "patch", "split")}
    for r in range(rows):
        c = table[r % classes]
        h, w = (int(v) for v in rng.integers(side, side + side // 8 + 1, size=2))
        ch = 3 if r % 3 else 1
        img = rng.integers(0, 255, size=(h, w, ch), dtype=np.uint8)
        for k, v in zip(cols, (img.tobytes(), h, w, ch, c["id"], c["dataset"], c["label"], f"images/{r}.png", 0,
                               "train")):
            cols[k].append(v)
    root.joinpath("shards").mkdir(parents=True)
    t = pa.table(cols)
    shards = []
    for i, start in enumerate(range(0, rows, 1000)):
        shards.append(f"shards/part-{i:05d}.parquet")
        pq.write_table(t.slice(start, 1000), root / shards[-1])
    manifest = {"version": "bench0000000000", "params": {"min_side": side, "max_side": side + side // 8},
                "datasets": {f"d{i}": {"domain": ["pcb" if i % 2 else "metal"], "root": "/x"} for i in range(4)},
                "classes": table, "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def tree_memory(root: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) in bytes of process `root` and its descendants, from /proc (Linux).

    RSS counts shared pages (libtorch, Arrow buffers in Ray's shared-memory store) once per process;
    PSS splits them between the processes sharing them, so the PSS sum is the real footprint."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    keep, frontier = {root}, {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in keep}
        keep |= frontier
    rss = pss = 0
    for p in keep:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
    return rss, pss


class PeakRSS:
    """Sample the summed RSS of this process and all its descendants every `interval` s."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self.peak_pss, self._stop = interval, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = tree_memory(os.getpid())
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true",
                    help="skip the /proc memory sampler (it competes for the same 2 cores as training)")
    args = ap.parse_args()

    import ray
    import torch

    from rtl.train.checkpoint import read_meta
    from rtl.train.pretrain import PretrainConfig, pretrain_local, run_pretrain

    tmp = Path(tempfile.mkdtemp(prefix="rtl-bench-train-"))
    corpus = write_corpus(tmp / "corpus", args.rows, args.side)
    mb = sum(f.stat().st_size for f in (corpus / "shards").iterdir()) / 2**20
    print(f"corpus: {args.rows} rows, {args.side}-{args.side + args.side // 8} px, {mb:.1f} MiB parquet; "
          f"model {args.model}, batch {args.batch_size}, {args.epochs} epochs, {args.threads} threads total")

    def cfg(name: str, workers: int, cpus: int) -> PretrainConfig:
        return PretrainConfig(corpus=str(corpus), strategy="source", model=args.model, out=str(tmp / name),
                              epochs=args.epochs, batch_size=args.batch_size, lr=0.05, warmup_epochs=0.0,
                              workers=workers, cpus_per_worker=cpus, storage_path=str(tmp / "runs" / name))

    results = {}
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results["local"] = (read_meta(pretrain_local(cfg("local", 1, args.threads)))["history"], time.perf_counter() - t0)

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False, configure_logging=False)
    peaks = {}
    for name, workers in ((f"ray 1x{args.threads}", 1), (f"ray {args.threads}x1", args.threads)):
        with (PeakRSS() if not args.no_memory else contextlib.nullcontext(PeakRSS())) as mon:
            t0 = time.perf_counter()
            hist = read_meta(run_pretrain(cfg(name.replace(" ", "_"), workers, args.threads // workers)))["history"]
            results[name] = (hist, time.perf_counter() - t0)
        if not args.no_memory:
            peaks[name] = (mon.peak, mon.peak_pss)
    ray.shutdown()

    base = results["local"][0][-1]["images_per_s"]
    print(f"{'run':10s} {'img/s (last epoch)':>19s} {'ratio vs local':>15s} {'wall s':>8s} {'peak RSS / PSS':>18s}")
    for name, (hist, wall) in results.items():
        ips = hist[-1]["images_per_s"]
        peak = f"{peaks[name][0] / 2**30:.2f} / {peaks[name][1] / 2**30:.2f} GiB" if name in peaks else "-"
        print(f"{name:10s} {ips:19.1f} {ips / base:15.2f} {wall:8.1f} {peak:>18s}")
    if args.no_memory:
        return
    print(f"peak memory of driver + all Ray processes (raylet, GCS, workers): RSS sum "
          f"{max(p[0] for p in peaks.values()) / 2**30:.2f} GiB, PSS sum {max(p[1] for p in peaks.values()) / 2**30:.2f} "
          f"GiB (target < 4 GiB; PSS counts shared pages once)")


if __name__ == "__main__":
    main()
