"""Metrics an inspection team judges a model by (computed with scikit-learn).

Top-1 error on a test set that is mostly "ok" says little: a model that calls everything ok scores well.
Next to `error` we report
- `macro_f1`: mean F1 over classes (every class counts the same);
- `balanced_error`: 1 - mean per-class recall over the classes present (Brodersen et al. 2010);
and, when the target has an "ok" (good) class, the binary defect-vs-ok view, defect score = 1 - P(ok):
- `defect_recall`: share of defective images not predicted "ok" (argmax decision);
- `false_alarm_rate`: share of ok images predicted as some defect (argmax decision);
- `auroc`: ROC AUC of the defect score (threshold-free);
- `defect_recall_at_far`: the best defect recall over thresholds whose false-alarm rate is at most
  `max_false_alarm` (default 5%), i.e. the operating point a line would choose.
NaN where undefined (e.g. AUROC with one kind of image only).

A sweep optimises one of them on the val split (spec `objective`, names in rtl.artifacts.trial): the search,
the schedulers and Optuna always *minimise*, so an objective travels in loss form (`objective_loss`:
the value itself for error-like metrics, 1 - value for the others, e.g. 1 - macro F1); `from_loss`
turns it back into the metric a person reads. `defect_recall` means `defect_recall_at_far`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rtl.artifacts.trial import OBJECTIVES

NEEDS_OK = ("defect_recall", "false_alarm_rate", "auroc", "defect_recall_at_far")
NEEDS_OK_OBJECTIVES = ("defect_recall", "auroc")  # objectives that need the target's ok class
# the inspection_metrics key each objective reads
OBJECTIVE_METRIC = {"error": "error", "macro_f1": "macro_f1", "balanced_error": "balanced_error",
                    "defect_recall": "defect_recall_at_far", "auroc": "auroc"}
assert set(OBJECTIVE_METRIC) == set(OBJECTIVES)


def inspection_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str], ok_class: str | None,
                       *, max_false_alarm: float = 0.05) -> dict[str, float]:
    """y_true (N,) int class indices, probs (N, K) rows summing to 1 -> metric name -> value."""
    from sklearn.metrics import f1_score, roc_auc_score, roc_curve

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(f"probs shape {p.shape} does not match {len(y)} labels x {k} classes")
    pred = p.argmax(1) if len(y) else np.zeros(0, np.int64)
    out: dict[str, float] = {"n": float(len(y))}
    if not len(y):
        return out | {m: math.nan for m in ("error", "macro_f1", "balanced_error")}
    out["error"] = float((pred != y).mean())
    present = np.unique(y)
    out["macro_f1"] = float(f1_score(y, pred, labels=present, average="macro", zero_division=0))
    out["balanced_error"] = float(1.0 - np.mean([(pred[y == c] == c).mean() for c in present]))
    if ok_class is None or ok_class not in classes:
        return out
    ok = classes.index(ok_class)
    defect = y != ok  # (N,) bool
    score = 1.0 - p[:, ok]  # (N,) defect score
    called_defect = pred != ok
    out["defect_recall"] = float(called_defect[defect].mean()) if defect.any() else math.nan
    out["false_alarm_rate"] = float(called_defect[~defect].mean()) if (~defect).any() else math.nan
    if defect.any() and (~defect).any():
        out["auroc"] = float(roc_auc_score(defect, score))
        fpr, tpr, _ = roc_curve(defect, score)
        ok_points = fpr <= max_false_alarm + 1e-12
        out["defect_recall_at_far"] = float(tpr[ok_points].max()) if ok_points.any() else 0.0
    else:
        out["auroc"] = out["defect_recall_at_far"] = math.nan
    out["max_false_alarm"] = float(max_false_alarm)
    return out


def objective_direction(name: str) -> str:
    """"min" for error-like metrics, "max" for the rest."""
    return "min" if name in ("error", "balanced_error", "false_alarm_rate") else "max"


def objective_metric(objective: str) -> str:
    """The `inspection_metrics` key an objective reads (`defect_recall` -> `defect_recall_at_far`)."""
    return OBJECTIVE_METRIC[objective]


def objective_loss(objective: str, value: float | None) -> float:
    """`value` of the objective's metric in the form every searcher/scheduler minimises."""
    if value is None:
        return math.nan
    return float(value) if objective_direction(objective) == "min" else 1.0 - float(value)


def from_loss(objective: str, loss: float | None) -> float | None:
    """Inverse of `objective_loss`: the metric value a person reads (None stays None)."""
    if loss is None:
        return None
    return float(loss) if objective_direction(objective) == "min" else 1.0 - float(loss)


def objective_label(objective: str, max_false_alarm: float = 0.05) -> str:
    """Human name of an objective, e.g. "macro F1", "defect recall @ FAR<=5%"."""
    if objective == "defect_recall":
        return f"defect recall @ FAR<={100 * max_false_alarm:g}%"
    return {"error": "error", "macro_f1": "macro F1", "balanced_error": "balanced error", "auroc": "AUROC"}[objective]


def better_word(objective: str) -> str:
    """"lower" or "higher": which way the objective improves (for report lines)."""
    return "lower" if objective_direction(objective) == "min" else "higher"


def format_metrics(m: dict[str, Any]) -> str:
    keys = ("error", "macro_f1", "balanced_error", "defect_recall", "false_alarm_rate", "auroc",
            "defect_recall_at_far")
    return ", ".join(f"{k} {m[k]:.3f}" for k in keys if isinstance(m.get(k), (int, float)) and m[k] == m[k])
