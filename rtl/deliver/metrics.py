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
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

OBJECTIVES = ("error", "macro_f1", "balanced_error", "defect_recall", "auroc")
NEEDS_OK = ("defect_recall", "false_alarm_rate", "auroc", "defect_recall_at_far")


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


def format_metrics(m: dict[str, Any]) -> str:
    keys = ("error", "macro_f1", "balanced_error", "defect_recall", "false_alarm_rate", "auroc",
            "defect_recall_at_far")
    return ", ".join(f"{k} {m[k]:.3f}" for k in keys if isinstance(m.get(k), (int, float)) and m[k] == m[k])
