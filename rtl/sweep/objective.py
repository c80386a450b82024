"""The spec's objective inside a sweep (issue 11): what trials report, what status and report name.

Every searcher and scheduler minimises `objective_loss` (rtl.deliver.metrics.objective_loss: the val
error, or 1 - macro F1, 1 - AUROC, ...), so Optuna's study direction stays "minimize" and a study
created before objectives existed resumes as it was. A trial reports it per fine-tune epoch at the epoch
selected so far (selection itself stays on val error: rtl.train.engine.fit) and in its final report,
next to `val_error` / `test_error` and the objective's metric on val and test (`val_<m>`, `test_<m>`,
natural units). The rung probe of the ranked space reports its val error as `objective_loss`
(rtl.sweep.trial.ranked_init says why).
"""

from __future__ import annotations

import math
from typing import Any

from rtl.deliver.metrics import (
    from_loss,
    inspection_metrics,
    objective_direction,
    objective_label,
    objective_loss,
    objective_metric,
)
from rtl.sweep.spec import SweepSpec


class Objective:
    """The spec's objective (`name`) and the inspection metric it reads (`key`)."""

    def __init__(self, name: str = "error", max_false_alarm: float = 0.05) -> None:
        self.name, self.key, self.max_false_alarm = name, objective_metric(name), max_false_alarm

    @classmethod
    def of(cls, spec: Any) -> Objective:
        """The objective of a spec (a spec without the field: `error`, as before objectives existed)."""
        return cls(getattr(spec, "objective", "error"), getattr(spec, "max_false_alarm", 0.05))

    @property
    def label(self) -> str:
        """e.g. "val error", "val macro F1", "val defect recall @ FAR<=5%"."""
        return objective_label(self.name, self.max_false_alarm)

    @property
    def lower_is_better(self) -> bool:
        return objective_direction(self.name) == "min"

    def value(self, loss: float | None) -> float | None:
        """The metric a person reads from the minimised loss (an Optuna trial's value)."""
        return from_loss(self.name, loss)

    def loss(self, value: float | None) -> float:
        return objective_loss(self.name, value)

    def at_best(self, m: dict[str, Any]) -> float:
        """`objective_loss` of a fine-tune epoch record: the selected-so-far epoch's value."""
        if self.name == "error":
            return float(m["best_val_error"])
        return objective_loss(self.name, m.get(f"best_val_{self.key}"))

    def final(self, res: Any) -> dict[str, Any]:
        """Final-report fields of a FinetuneResult: `objective_loss` plus the metric's val / test values."""
        if self.name == "error":
            return {"objective_loss": float(res.val_error)}
        return {"objective_loss": objective_loss(self.name, res.metrics.get(f"val_{self.key}")),
                f"val_{self.key}": res.metrics.get(f"val_{self.key}"),
                f"test_{self.key}": res.metrics.get(f"test_{self.key}")}

    def test_value(self, t: Any) -> float | None:
        """The objective's metric on the test split of a finished Optuna trial (`rtl.test_<m>`)."""
        v = t.user_attrs.get(f"rtl.test_{self.key}")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def objective_hooks(spec: SweepSpec) -> tuple[Objective, Any]:
    """(the spec's Objective, run_finetune's `val_metrics`): every inspection metric of the val split
    after every epoch (rtl.deliver.metrics; a few ms for a few hundred images), whatever the objective."""

    from rtl.deliver.model import find_ok_class  # torch: only in the trial process

    def val_metrics(y: Any, p: Any, classes: list[str]) -> dict[str, float]:
        m = inspection_metrics(y, p, classes, find_ok_class(classes, spec.ok_class),
                               max_false_alarm=spec.max_false_alarm)
        return {k: v for k, v in m.items() if k not in ("n", "error", "max_false_alarm")}

    return Objective.of(spec), val_metrics
