"""Ray Train workers' per-epoch metrics to the driver (see rtl/train/progress.py for why not their prints).

Imports Ray: used by `run_pretrain` only, never by `--local` runs or `rtl --help`.
"""

from __future__ import annotations

import threading
from typing import Any

import ray
from ray.train import UserCallback
from ray.util.queue import Empty, Queue


class ReportForwarder(UserCallback):
    """Train V2 controller callback: puts rank 0's metrics of every report on the driver's queue."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if not metrics:
            return
        try:  # blocking put: the item is on the queue before `fit()` can return
            self.queue.put(dict(metrics[0]), timeout=10)
        except Exception:  # noqa: BLE001 - progress must never fail a training run
            pass


class RayEpochRelay:
    """Context manager around `TrainerV2.fit()`: `callback` goes into `RunConfig(callbacks=[...])`; every
    reported epoch is handed to `on_epoch(epoch, metrics)` in a driver thread while fit() blocks, and the
    rest after it returns. Needs Ray initialised."""

    def __init__(self, on_epoch) -> None:
        self.on_epoch = on_epoch
        self.queue = Queue(actor_options={"num_cpus": 0})  # no CPU: all of them go to the workers
        self.callback = ReportForwarder(self.queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="rtl-epoch-relay", daemon=True)

    def _show(self, m: dict[str, Any]) -> None:
        try:
            self.on_epoch(int(m.get("epoch", 0)), m)
        except Exception:  # noqa: BLE001 - a closed stream must not end the run
            pass

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                self._show(self.queue.get(timeout=0.5))
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - queue actor gone (Ray shut down): nothing left to show
                return

    def __enter__(self) -> RayEpochRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            while not self.queue.empty():  # what arrived after the thread's last poll
                self._show(self.queue.get_nowait())
        except Exception:  # noqa: BLE001
            pass
        ray.kill(self.queue.actor)
