"""The local engine of `rtl corpus build`: the build's units in a process pool on this machine, no Ray.

Why (issue 13): on small jobs a fresh local Ray's start (5-12 s here: raylet, API server, agents) was
~55 % of a 9k-image 64 px build, which a plain single-process loop finishes in ~10 s. The same units
(`corpus_build._units`) go through the same pure function (`corpus_build._process_unit`) in worker
processes of the standard library's `ProcessPoolExecutor`, one per CPU this process may use; each
worker writes its own shard and returns only small metadata, so, as with Ray, pixels never reach the
driver and its memory stays flat in the number of images.

Start method, chosen by measurement (docs/measurements/corpus.md, "session 4: local engine"): **fork**
when this process runs no other thread and no Ray, else **forkserver**. A forked worker inherits the
driver's imports (numpy, PIL, pyarrow, rtl): two workers had run a task 12-20 ms after the pool was
made. A forkserver first starts an interpreter that imports `rtl.data.corpus_build` (0.70-0.87 s to the
same point; spawn pays the imports in every worker); whole 9k-image commands, 3 interleaved runs each:
fork 9.3 s vs forkserver 12.2 s median at 64 px, 26.8 vs 28.5 s at 224-256 px. But fork copies only the
forking thread, so a lock held by another thread (Ray's core worker, gRPC, a thread mid-import) would
stay locked forever in the child: in that case the forkserver is used, started before the label scan
(`LocalPool.prestart`) so that its imports overlap the scan. In the CLI the scan runs in the main thread
and the workers fork after it, with no other thread alive, so there is nothing to overlap.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from rtl.errors import RtlError

ENGINES = ("auto", "local", "ray")  # `rtl corpus build --engine` (here: the CLI imports it without pyarrow)

# None: `start_method()` decides (fork when safe, else forkserver); a benchmark may set "fork"/"forkserver"
START_METHOD: str | None = None
_PRELOAD = ["rtl.data.corpus_build"]  # what a forkserver imports once (PIL, pyarrow, numpy come with it)


def local_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cgroup cpusets), else `os.cpu_count()`."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def start_method() -> str:
    """Linux: 'fork' when forking is safe here (one Python thread, no Ray in this process), else
    'forkserver'; elsewhere 'spawn' (Python's own default on macOS and Windows)."""
    if START_METHOD:
        return START_METHOD
    if not sys.platform.startswith("linux"):  # macOS: fork is unsafe with system frameworks; Windows: none
        return "spawn"
    ray = sys.modules.get("ray")
    ray_up = ray is not None and getattr(ray, "is_initialized", lambda: False)()
    if ray_up or threading.active_count() > 1:
        return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return "fork"


def _worker_init() -> None:
    """Ctrl-C belongs to the driver, which then stops the workers: no traceback from every worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BuildProgress:
    """The build's progress line on stderr (both engines): at most one every 2 s, and one at the end."""

    def __init__(self, n_units: int, n_images: int, enabled: bool) -> None:
        self.n_units, self.n_images, self.enabled = n_units, n_images, enabled
        self.tasks = self.images = 0
        self.t_print = time.monotonic()

    def add(self, meta: dict) -> None:
        self.tasks += 1
        self.images += int(meta["n_decoded"])

    def tick(self, last: bool) -> None:
        if self.enabled and (last or time.monotonic() - self.t_print > 2.0):
            print(f"corpus build: {self.tasks}/{self.n_units} tasks, {self.images}/{self.n_images} images",
                  file=sys.stderr, flush=True)
            self.t_print = time.monotonic()


class LocalPool:
    """A process pool for one build: `prestart()` before the label scan, `run(...)` after it."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or local_cpus()
        self.method = start_method()

    def prestart(self) -> None:
        """Forkserver: start its server now (it imports numpy/PIL/pyarrow while the driver scans labels)."""
        if self.method == "forkserver":
            from multiprocessing import forkserver

            multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
            forkserver.ensure_running()

    def run(self, fn: Callable[..., dict], units: Sequence[dict], args: tuple, *, progress: bool,
            n_images: int) -> list[dict]:
        """`fn(unit, *args)` for every unit, `self.workers` at a time -> the units' metadata, by uid.

        A unit that raises, or a worker that dies (OOM killer, a crash in a decoder), fails the build with
        one line (`RtlError`); Ctrl-C or any other exit stops the workers before returning, so the caller
        can delete the half-written build folder.
        """
        if not units:
            return []
        ex = cf.ProcessPoolExecutor(max_workers=min(self.workers, len(units)), initializer=_worker_init,
                                    mp_context=multiprocessing.get_context(self.method))
        ok = False
        try:
            pending = {ex.submit(fn, u, *args) for u in units}
            metas: list[dict] = []
            line = BuildProgress(len(units), n_images, progress)
            while pending:
                done, pending = cf.wait(pending, timeout=2.0, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    metas.append(_result(fut))
                    line.add(metas[-1])
                line.tick(last=not pending)
            ok = True
            return sorted(metas, key=lambda m: m["uid"])
        finally:
            if not ok:
                _stop_workers(ex)
            ex.shutdown(wait=True, cancel_futures=True)


def _result(fut: cf.Future) -> Any:
    try:
        return fut.result()
    except cf.process.BrokenProcessPool:
        raise RtlError("corpus build: a decode worker process died (killed, or out of memory?)") from None
    except Exception as e:  # noqa: BLE001 - e.g. a shard that cannot be written: one line, not a traceback
        first = (str(e).strip().splitlines() or [""])[0]
        raise RtlError(f"corpus build: a decode task failed: {type(e).__name__}: {first}") from None


def _stop_workers(ex: cf.ProcessPoolExecutor) -> None:
    """Terminate the pool's workers now (Python >= 3.14 has `terminate_workers`; before, its process table)."""
    terminate = getattr(ex, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    for p in list((getattr(ex, "_processes", None) or {}).values()):
        if p.is_alive():
            p.terminate()
