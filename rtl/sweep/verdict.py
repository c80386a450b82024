"""A target's answer with a null, and the champion it implies (sweep layer: deliver and report both read it).

A subset is named only if its seeds beat both references -- the generalist alone and all sources -- by
more than 2σ of seed noise (σ: the seed std pooled over the configurations compared -- each one's variance
weighted by its degrees of freedom -- floored at one val image's worth of error); otherwise "no subset beats
the generalist" and the better reference is recommended. Pooled, not the largest of the three stds (as until
session 15): with two seeds each std has one degree of freedom and the largest of three such estimates is biased
upward -- on the benchmark (three draws, 48 targets, two seeds) that rule said "none" 9 times, 8 of them with a
searched configuration better on mean test (one reference's val was 0.67 on one seed, 0.29 on the other); pooled,
on the draw not seen before the change: 14 subsets named instead of 12, each better on test, no false claim
(docs/measurements/search.md, session 15). The selection seed's value is optimistic (it was chosen on val),
which is why the other seeds (confirm trials) are in the mean. The comparison is on the spec's objective
(rtl.sweep.objective), with the same 2σ rule in its units. `reference_beats_best` says when the recommended reference beats the
best searched configuration by more than the noise: rtl.sweep.deliver then delivers the reference.
(Moved here from rtl.report so the sweep's delivery can use it without importing upwards.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rtl.artifacts.trial import IMPORTANCE_TRIAL, fine_tunes_importance_pretraining, is_importance_trial
from rtl.data.convention import load_dataset
from rtl.deliver.metrics import objective_direction, objective_label
from rtl.sweep.objective import Objective
from rtl.sweep.spec import load_resolved
from rtl.sweep.status import best_searched, target_trials
from rtl.sweep.trial import candidates_compared, tracker_for

CONTROLS = ("scratch", "imagenet", "generalist", "uniform", "importance")  # report row order


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
    mb = mean_std_n(best)[0]
    refs = {k: mean_std_n(v)[0] for k, v in (("generalist", generalist), ("all sources", all_sources)) if v}
    if not refs or math.isnan(mb):
        return {"chosen": False, "recommend": "subset" if not math.isnan(mb) else "-", "sigma": math.nan,
                "margins": {}, "message": "no reference row finished: cannot test the subset against a null"}
    pooled = pooled_std([best] + [v for v in (generalist, all_sources) if v])
    sigma = max(floor, 0.0 if math.isnan(pooled) else pooled)
    margins = {name: m - mb for name, m in refs.items()}
    if all(d > 2 * sigma for d in margins.values()):
        return {"chosen": True, "recommend": "subset", "sigma": sigma, "margins": margins,
                "message": f"subset {subset} beats " + " and ".join(
                    f"{k} by {d:.3f}" for k, d in margins.items()) + f"{unit} (> 2σ = {2 * sigma:.3f})"}
    better = min(refs, key=lambda k: refs[k])
    return {"chosen": False, "recommend": better, "sigma": sigma, "margins": margins,
            "message": f"no subset beats the generalist and all sources by > 2σ = {2 * sigma:.3f}{unit} "
                       f"(margins: " + ", ".join(f"{k} {d:+.3f}" for k, d in margins.items())
                       + f"); recommend {better}"}


def pooled_std(groups: Sequence[Sequence[float | None]]) -> float:
    """Seed std pooled over configurations: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over the groups with two
    or more finite values (one-way ANOVA's within-group estimate); nan when none has two."""
    ss, df = 0.0, 0
    for g in groups:
        a = np.asarray([x for x in g if x is not None and math.isfinite(x)], dtype=np.float64)
        if len(a) > 1:
            ss += float(((a - a.mean()) ** 2).sum())
            df += len(a) - 1
    return math.sqrt(ss / df) if df else math.nan


def mean_std_n(xs: list[float]) -> tuple[float, float, int]:
    a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(a):
        return math.nan, math.nan, 0
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def confirm_results(results_dir: str, target: str, number: int) -> dict[int, dict[str, float | None]]:
    """seed -> {"val", "test"} (the objective's metric, e.g. final_val_macro_f1) of the finished confirm
    runs of Optuna trial `number` (MLflow)."""
    spec = load_resolved(results_dir)
    key = Objective.of(spec).key
    tracker = tracker_for(spec)
    out: dict[int, dict[str, float | None]] = {}
    for r in tracker.find_runs({"rtl.kind": "confirm", "rtl.target": target, "rtl.optuna_number": str(number)}):
        m, seed = r.data.metrics, r.data.tags.get("rtl.seed")
        if f"final_val_{key}" in m and seed is not None and r.data.tags.get("rtl.final"):
            out[int(seed)] = {"val": m[f"final_val_{key}"], "test": m.get(f"final_test_{key}")}
    return out


def summarize_target(results_dir: str, target: str) -> dict[str, Any]:
    """Rows (controls, best searched) of val / test values of the spec's objective, mean ± std over seeds."""
    obj = Objective.of(load_resolved(results_dir))
    trials = [t for t in target_trials(results_dir, target) if t.state.name == "COMPLETE"]
    searched = [t for t in trials if not t.user_attrs.get("rtl.control")]
    best = best_searched(results_dir, target)  # the trial the runner confirms over seeds
    rows: dict[str, dict[str, Any]] = {}
    for name in CONTROLS:
        ts = [t for t in trials if t.user_attrs.get("rtl.control") == name]
        if ts:
            vals = [obj.value(t.value) for t in ts]
            rows[name] = {"val": mean_std_n(vals), "test": mean_std_n([obj.test_value(t) for t in ts]), "vals": vals}
    confirm: dict[int, dict[str, float | None]] = {}
    if best is not None:
        confirm = confirm_results(results_dir, target, best.number)
        vals = [obj.value(best.value)] + [c["val"] for c in confirm.values()]
        tests = [obj.test_value(best)] + [c["test"] for c in confirm.values()]
        rows["best (search)"] = {"val": mean_std_n(vals), "test": mean_std_n(tests), "vals": vals}
    gains = {}  # improvement of the mean test value (positive = the searched configuration is better)
    sign = 1.0 if obj.lower_is_better else -1.0  # error-like: ref - best; higher-is-better: best - ref
    if best is not None and rows["best (search)"]["test"][2]:
        for ref in ("scratch", "imagenet", "uniform"):
            if ref in rows and rows[ref]["test"][2]:
                gains[ref] = sign * (rows[ref]["test"][0] - rows["best (search)"]["test"][0])
    return {"target": target, "best": best, "rows": rows, "gains": gains, "n_complete": len(trials),
            "n_searched": len(searched), "confirm_seeds": sorted(confirm), "objective": obj}


def subset_name(t: Any) -> str:
    """How the verdict names a trial's sources: the mask, or for the importance trial what it really is."""
    label = t.user_attrs.get("rtl.enqueued")
    eff = t.user_attrs.get("rtl.effective_sources")
    cmask = t.user_attrs.get("rtl.candidate_mask")  # the units the picked importance candidate pretrained on
    tail = (f"; 90 % of its images from {eff}" if eff else "") + ")"
    if cmask and (fine_tunes_importance_pretraining(t.params, label) or is_importance_trial(label)):
        n = len(cmask.split(","))
        what = (f"{n} source{'s' if n > 1 else ''} ({cmask}), the importance trial's pretraining "
                f"(importance-weighted from scratch on {'them' if n > 1 else 'it'})")
        return (f"({what}" + (f" fine-tuned at lr {t.params.get('lr', 0):.3g}" if not is_importance_trial(label)
                              else "") + tail)
    if fine_tunes_importance_pretraining(t.params, label):
        return (f"(every source, the importance trial's pretraining (importance-weighted from scratch) fine-tuned "
                f"at lr {t.params.get('lr', 0):.3g}" + tail)
    if is_importance_trial(label):
        what = "every source" if label == IMPORTANCE_TRIAL else f"the ranking's top {t.params.get('k', '?')}"
        cand = t.user_attrs.get("rtl.candidate")  # the best of several candidates (rtl.sweep.candidates)
        how = ((f"the best importance-weighted candidate from scratch, {cand}" if candidates_compared(cand) else
                f"importance-weighted from scratch {cand}") if cand else
               f"importance-weighted at T={t.params.get('temperature', '?')} from scratch")
        return f"({what}, {how}" + tail
    return str(t.user_attrs.get("rtl.mask"))


REFERENCE_CONTROL = {"generalist": "generalist", "all sources": "uniform"}  # verdict name -> control


def target_verdict(spec: Any, target: str, s: dict[str, Any]) -> dict[str, Any] | None:
    """The answer with a null (`subset_verdict` above) for one target's summary
    (`summarize_target`); None before any searched trial completed."""
    rows, b = s["rows"], s["best"]
    if b is None or "best (search)" not in rows:
        return None
    try:
        floor = 1.0 / max(1, len(load_dataset(dict(zip(spec.target_names(), spec.target_paths()))[target]).split("val")))
    except Exception:  # noqa: BLE001 -- the report must not fail on a moved target
        floor = 0.0
    obj = Objective.of(spec)
    return subset_verdict(rows["best (search)"]["vals"], rows.get("generalist", {}).get("vals"),
                          rows.get("uniform", {}).get("vals"), floor=floor, subset=subset_name(b),
                          objective=obj.name, max_false_alarm=obj.max_false_alarm)


def reference_beats_best(v: dict[str, Any] | None) -> str | None:
    """The reference control ("generalist" / "uniform") the verdict recommends when the best searched trial
    is worse than it by MORE than 2σ of seed noise (then it is delivered instead); None otherwise."""
    if not v or v["chosen"] or v["recommend"] not in REFERENCE_CONTROL:
        return None
    margin = v["margins"].get(v["recommend"], math.nan)
    return REFERENCE_CONTROL[v["recommend"]] if margin < -2 * v["sigma"] else None  # nan: never
