"""The sweep's answer with a null, and each source's effect estimated from every finished trial.

A subset is named only if its seeds beat both references -- the generalist alone and all sources -- by
more than 2σ of seed noise (σ: the larger seed std of the two configurations compared, floored at one val
image's worth of error); otherwise "no subset beats the generalist" and the better reference is
recommended. The selection seed's value is optimistic (it was chosen on val), which is why the other
seeds (confirm trials) are in the mean.

The comparison is on the spec's objective (rtl.sweep.objective: val error by default, or macro F1,
balanced error, defect recall at a false-alarm rate, AUROC), with the same 2σ rule in its units; the
floor stays one val image's worth, a coarse bound for the non-error metrics too.

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

from rtl.deliver.metrics import objective_direction, objective_label


def _ms(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], float)
    if not len(a):
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def subset_verdict(best: Sequence[float], generalist: Sequence[float] | None, all_sources: Sequence[float] | None,
                   *, floor: float = 0.0, subset: str = "", objective: str = "error",
                   max_false_alarm: float = 0.05) -> dict[str, Any]:
    """best / generalist / all_sources: val values of `objective` over seeds (val errors by default;
    higher is better for macro_f1 / defect_recall / auroc). -> {"chosen": bool, "recommend":
    "subset"|"generalist"|"all sources", "message": str, "sigma": float, "margins": {...}}; margins are
    improvements in the objective's units (positive = the subset is better)."""
    if objective_direction(objective) == "max":  # compare as losses: the same rule, the same margins
        best, generalist, all_sources = ([1.0 - x for x in v if x is not None] if v else v
                                         for v in (best, generalist, all_sources))
    unit = "" if objective == "error" else f" {objective_label(objective, max_false_alarm)}"
    mb, sb = _ms(best)
    refs = {k: _ms(v) for k, v in (("generalist", generalist), ("all sources", all_sources)) if v}
    if not refs or math.isnan(mb):
        return {"chosen": False, "recommend": "subset" if not math.isnan(mb) else "-", "sigma": math.nan,
                "margins": {}, "message": "no reference row finished: cannot test the subset against a null"}
    margins, sigma = {}, max(floor, sb)
    for name, (m, s) in refs.items():
        margins[name] = m - mb
        sigma = max(sigma, s)
    if all(d > 2 * sigma for d in margins.values()):
        return {"chosen": True, "recommend": "subset", "sigma": sigma, "margins": margins,
                "message": f"subset {subset} beats " + " and ".join(
                    f"{k} by {d:.3f}" for k, d in margins.items()) + f"{unit} (> 2σ = {2 * sigma:.3f})"}
    better = min(refs, key=lambda k: refs[k][0])
    return {"chosen": False, "recommend": better, "sigma": sigma, "margins": margins,
            "message": f"no subset beats the generalist and all sources by > 2σ = {2 * sigma:.3f}{unit} "
                       f"(margins: " + ", ".join(f"{k} {d:+.3f}" for k, d in margins.items())
                       + f"); recommend {better}"}


def trial_mask(t: Any) -> list[str] | None:
    """Sources of a finished Optuna trial (None for scratch / ImageNet inits: no source decision)."""
    m = t.user_attrs.get("rtl.mask", "none")
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
