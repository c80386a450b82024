"""`rtl sweep status DIR`: per target, trials done / running / pruned / errored and the best val so far.

Read from the Optuna RDB storage (the search's source of truth: states as told by the searcher) and
the Tune experiment state (what Tune will resume); works while a sweep runs or after it died. Confirm
trials (best configuration re-run with the other seeds, not Optuna trials) are shown from their own
Tune experiment `<results>/ray_confirm/<target>/trial_<best number>`.
"""

from __future__ import annotations

from typing import Any

from rtl.artifacts.layout import RAY_CONFIRM, RAY_RESULTS
from rtl.sweep.spec import join, load_resolved


def target_trials(results_dir: str, target: str) -> list[Any]:
    """Optuna FrozenTrials of one target's study (orphans of a killed driver excluded)."""
    from rtl.sweep.search import counted, open_study

    spec = load_resolved(results_dir)
    study = open_study(spec.optuna_url(), f"{spec.name}/{target}")
    return [t for t in study.get_trials(deepcopy=False) if counted(t)]


def mlflow_disagreement(results_dir: str, target: str, trials: list[Any]) -> str | None:
    """A line when MLflow's finished trial runs (COMPLETE/PRUNED by `rtl.state`) differ from Optuna's
    finished trials of the target; None when they agree or MLflow cannot be read."""
    try:
        from rtl.sweep.trial import tracker_for

        runs = tracker_for(load_resolved(results_dir)).find_runs({"rtl.kind": "trial", "rtl.target": target})
    except Exception:  # noqa: BLE001 -- status must work while MLflow is unreachable
        return None
    ids = {t.user_attrs.get("rtl.tune_trial_id") for t in trials if t.state.name in ("COMPLETE", "PRUNED")}
    ml = {r.data.tags.get("rtl.trial_id") for r in runs if r.data.tags.get("rtl.state") in ("complete", "pruned")}
    if ids == ml:
        return None
    return (f"{target}: Optuna and MLflow disagree: finished in Optuna only {sorted(ids - ml)}, "
            f"in MLflow only {sorted(ml - ids)}")


def best_searched(results_dir: str, target: str) -> Any:
    """The COMPLETE non-control trial best on the spec's objective (ties: lowest number); None if none.
    A trial's Optuna value is the objective in loss form (rtl.sweep.objective: val error, 1 - macro F1,
    ...), so "best" is the lowest value whatever the objective. The runner confirms this trial over
    seeds, keeps its model and the report shows it: one definition for all three."""
    done = [t for t in target_trials(results_dir, target)
            if t.state.name == "COMPLETE" and not t.user_attrs.get("rtl.control")]
    return min(done, key=lambda t: (t.value, t.number), default=None)


def confirm_experiment(spec: Any, target: str, number: int) -> str:
    """Tune experiment path of the confirm trials of searched trial `number`."""
    return join(spec.results_dir, RAY_CONFIRM, target, f"trial_{number:04d}")


def sweep_status(results_dir: str) -> list[dict[str, Any]]:
    from rtl.sweep.objective import Objective

    spec = load_resolved(results_dir)
    objective = Objective.of(spec)
    rows = []
    for target in spec.target_names():
        trials = target_trials(results_dir, target)
        by = {s: [t for t in trials if t.state.name == s] for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
        best = min(by["COMPLETE"], key=lambda t: t.value, default=None)  # value: the objective as a loss
        rows.append({
            "target": target, "budget": spec.budget.trials_per_target, "done": len(by["COMPLETE"]),
            "pruned": len(by["PRUNED"]), "errored": len(by["FAIL"]), "running": len(by["RUNNING"]),
            "queued": len(by["WAITING"]), "objective": objective.name, "objective_label": objective.label,
            "best_val": objective.value(best.value) if best else None,  # the objective's metric, on val
            "best_trial": best.number if best else None,
            "best_mask": best.user_attrs.get("rtl.mask") if best else None,
            "tune": _tune_counts(join(spec.results_dir, RAY_RESULTS, target)),
            "confirm": _confirm_counts(spec, results_dir, target),
            "disagreement": mlflow_disagreement(results_dir, target, trials),
        })
    return rows


def _confirm_counts(spec: Any, results_dir: str, target: str) -> dict[str, int] | None:
    if len(set(spec.seeds)) < 2:
        return None
    best = best_searched(results_dir, target)
    return _tune_counts(confirm_experiment(spec, target, best.number)) if best is not None else None


def _tune_counts(exp_path: str) -> dict[str, int] | None:
    import os

    if "://" not in exp_path and not os.path.isdir(exp_path):
        return None
    try:
        import logging

        from ray.tune import ExperimentAnalysis

        logging.getLogger("ray.tune").setLevel(logging.ERROR)
        trials = ExperimentAnalysis(exp_path).trials
    except Exception:
        return None
    out: dict[str, int] = {}
    for t in trials:
        out[t.status] = out.get(t.status, 0) + 1
    return out


def format_status(rows: list[dict[str, Any]]) -> str:
    label = rows[0].get("objective_label", "error") if rows else "error"
    head = (f"{'target':<20} {'done':>5} {'pruned':>6} {'errored':>7} {'running':>7} {'queued':>6} {'budget':>6}  "
            f"{'best val ' + label + ' (trial, sources)':<26}   tune state")
    lines = [head, "-" * len(head)]
    for r in rows:
        best = f"{r['best_val']:.4f} (#{r['best_trial']}, {r['best_mask']})" if r["best_val"] is not None else "-"
        tune = ", ".join(f"{k.lower()} {v}" for k, v in sorted(r["tune"].items())) if r["tune"] else "not started"
        if r.get("confirm"):
            tune += "; confirm seeds: " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(r["confirm"].items()))
        lines.append(f"{r['target']:<20} {r['done']:>5} {r['pruned']:>6} {r['errored']:>7} {r['running']:>7} "
                     f"{r['queued']:>6} {r['budget']:>6}  {best:<26} {tune}")
    lines += [f"warning: {r['disagreement']}" for r in rows if r.get("disagreement")]
    return "\n".join(lines)
