"""Per-epoch progress of the long training verbs (`rtl pretrain`), on the driver's stderr.

A terminal gets a tqdm bar (loss / throughput in its postfix); a pipe or log file gets one plain line per
epoch (`pretrain epoch 2/10 train_loss 1.2345 images_per_s 812.3`), which grep and CI logs can read.

Ray Train workers run in other processes, and `rtl.raystart.ensure_ray` starts Ray with
`log_to_driver=False` (Ray's own worker noise stays in its session logs; Train V2 also routes a worker's
`print` to its logger). So worker prints never reach the user. Instead the Train V2 controller, which sees
every `ray.train.report` (one per epoch; rank 0's metrics first), forwards the metrics through a small
Ray queue actor (`ray.util.queue.Queue`, 0 CPUs) to a thread in the driver that prints them
(`rtl.train.ray_progress.RayEpochRelay`). Works the same on a cluster, where workers are on other machines.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

SHOWN = ("train_loss", "val_error", "best_val_error", "images_per_s")


class EpochProgress:
    """`on_epoch(epoch, metrics)` callable (0-based epoch) that shows progress; never asks to stop.

    `epoch` may start above 0 (a resumed run): the bar starts there. `close()` ends the bar.
    """

    def __init__(self, epochs: int, *, desc: str = "epoch", stream: TextIO | None = None,
                 bar: bool | None = None) -> None:
        self.epochs, self.desc = epochs, desc
        self.stream = stream if stream is not None else sys.stderr
        self.use_bar = self.stream.isatty() if bar is None else bar
        self._bar = None

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> bool:
        shown = {k: float(metrics[k]) for k in SHOWN if isinstance(metrics.get(k), (int, float))}
        if self.use_bar:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=self.epochs, initial=epoch, desc=self.desc, unit="epoch",
                                 file=self.stream, leave=True)
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
            self._bar.update(epoch + 1 - self._bar.n)
        else:
            print(f"{self.desc} epoch {epoch + 1}/{self.epochs} " + " ".join(f"{k} {v:.4f}" for k, v in shown.items()),
                  file=self.stream, flush=True)
        return False

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
