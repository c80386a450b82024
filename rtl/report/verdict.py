"""Each source's effect estimated from every finished trial (and, re-exported, the sweep's answer with a
null: `subset_verdict` lives in rtl.sweep.verdict, where the sweep's delivery reads it too).

Per-source effect: mean objective loss (Optuna's value: val error, 1 - macro F1, ...) of finished trials
*without* the source minus *with* it (positive = including it improves the objective), with a Welch 95 %
interval. Users asked for this instead of Optuna's
parameter importances, which mislead on the anchor/bit and top-k encodings (docs/measurements/sweep.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rtl.artifacts.trial import pretrained_sources
from rtl.sweep.verdict import subset_verdict  # noqa: F401 - re-exported (it lives in the sweep layer)


def trial_mask(t: Any) -> list[str] | None:
    """Sources of a finished Optuna trial (None for scratch / ImageNet inits: no source decision)."""
    m = pretrained_sources(t.user_attrs, "none")
    if m == "generalist":
        return []
    if m in ("none", ""):
        return None
    return m.split(",")


def source_effects(trials: Sequence[Any], units: Sequence[str]) -> list[dict[str, Any]]:
    """Per unit: effect = mean Optuna value (the objective as a loss; val error by default) without - with
    (over COMPLETE trials with a source decision), Welch 95 % half-width, counts. Positive = the source
    improves the objective. Units never (or always) in a mask get NaN."""
    rows = [(trial_mask(t), float(t.value)) for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    rows = [(m, v) for m, v in rows if m is not None]
    out = []
    for u in units:
        w = np.array([v for m, v in rows if u in m])
        wo = np.array([v for m, v in rows if u not in m])
        if len(w) and len(wo):
            eff = float(wo.mean() - w.mean())
            var = (w.var(ddof=1) / len(w) if len(w) > 1 else 0.0) + (wo.var(ddof=1) / len(wo) if len(wo) > 1 else 0.0)
            half = 1.96 * math.sqrt(var) if len(w) > 1 and len(wo) > 1 else math.nan
        else:
            eff, half = math.nan, math.nan
        out.append({"unit": u, "effect": eff, "half_width": half, "n_with": int(len(w)), "n_without": int(len(wo))})
    return sorted(out, key=lambda r: (-(r["effect"] if math.isfinite(r["effect"]) else -1e9), r["unit"]))


def plot_effects(effects: Sequence[dict[str, Any]], path: str, title: str, label: str = "val error") -> str | None:
    """Horizontal bars with 95 % intervals; None when no unit has an estimate."""
    rows = [r for r in effects if math.isfinite(r["effect"])]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.35 * len(rows)))
    y = np.arange(len(rows))[::-1]
    err = [r["half_width"] if math.isfinite(r["half_width"]) else 0.0 for r in rows]
    ax.barh(y, [r["effect"] for r in rows], xerr=err, color=["tab:green" if r["effect"] > 0 else "tab:red"
                                                             for r in rows], alpha=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['unit']} ({r['n_with']}/{r['n_without']})" for r in rows], fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"{label} loss without − with (positive: the source helps); 95 % interval"
                  if label != "val error" else "val error without − with (positive: the source helps); 95 % interval")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
