"""`rtl sweep report DIR`: per target the best searched configuration vs every control.

Numbers come from the Optuna storage (COMPLETE trials only: pruned trials never reached the full
fine-tuning budget, so their scores are not comparable). Selection is by the spec's objective on **val**
(rtl.sweep.objective: error by default, or macro F1, balanced error, defect recall at a false-alarm
rate, AUROC); its test value is only reported. Every row and the verdict are in the objective's units. Controls run once per seed; the best searched configuration (found with the first seed)
is re-run with every other seed by the runner's "confirm" trials (MLflow runs `rtl.kind=confirm`), so
every row is mean ± sample std over seeds, with n shown. Gains are differences of mean test error to
scratch, ImageNet and the uniform corpus (positive = the searched configuration is better). The
searched row's value for the first seed is the minimum over the search, so it is optimistically biased
on val (selection); the other seeds and all test errors are not.
Outputs `<results>/report/{report.md, errors_<target>.png, importance_<target>.png}`, also logged to
MLflow (the target's parent run).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from rtl.artifacts.layout import REPORT_MD, report_dir
from rtl.artifacts.trial import (
    IMPORTANCE_TRIAL,
    fine_tunes_importance_pretraining,
    is_importance_trial,
    pretrained_sources,
)
from rtl.report.verdict import plot_effects, source_effects
from rtl.sweep.objective import Objective
from rtl.sweep.spec import load_resolved
from rtl.sweep.status import target_trials
from rtl.sweep.trial import candidates_compared, tracker_for, units_of
from rtl.sweep.verdict import (  # noqa: F401 - re-exported: report readers import them from here
    CONTROLS,
    REFERENCE_CONTROL,
    confirm_results,
    reference_beats_best,
    subset_name,
    summarize_target,
    target_verdict,
)
from rtl.sweep.verdict import mean_std_n as _ms


def _fmt(m: float, s: float, n: int) -> str:
    return "-" if n == 0 else (f"{m:.3f} (n=1)" if n == 1 else f"{m:.3f} ± {s:.3f} (n={n})")


INSPECTION = (("macro_f1", "macro F1"), ("balanced_error", "balanced error"), ("defect_recall", "defect recall"),
              ("false_alarm_rate", "false alarms"), ("auroc", "AUROC"), ("defect_recall_at_far", "recall @ FAR<=5%"))


def inspection_summary(results_dir: str, target: str, best: Any) -> tuple[dict[str, dict[str, tuple]], str | None]:
    """Per strategy (controls, best searched incl. its confirm seeds) mean ± std over seeds of the
    inspection metrics the trials logged (rtl.deliver.metrics; `test_*`, `val_*` when no test split).
    -> (rows, ok class name or None)."""
    tracker = tracker_for(load_resolved(results_dir))
    runs = tracker.find_runs({"rtl.kind": "trial", "rtl.target": target})
    groups: dict[str, list[Any]] = {n: [r for r in runs if r.data.tags.get("rtl.control") == n] for n in CONTROLS}
    if best is not None:
        tid = best.user_attrs.get("rtl.tune_trial_id")
        groups["best (search)"] = [r for r in runs if r.data.tags.get("rtl.trial_id") == tid] + tracker.find_runs(
            {"rtl.kind": "confirm", "rtl.target": target, "rtl.optuna_number": str(best.number)})
    rows: dict[str, dict[str, tuple]] = {}
    ok = None
    for name, rs in groups.items():
        rs = [r for r in rs if r.data.tags.get("rtl.eval_split")]
        if not rs:
            continue
        ok = ok or rs[0].data.tags.get("rtl.ok_class") or None
        rows[name] = {m: _ms([r.data.metrics.get(f"{r.data.tags['rtl.eval_split']}_{m}") for r in rs])
                      for m, _ in INSPECTION}
    return rows, ok


def _inspection_md(rows: dict[str, dict[str, tuple]], ok: str | None) -> list[str]:
    if not rows:
        return []
    cols = [(m, lab) for m, lab in INSPECTION if any(r[m][2] for r in rows.values())]
    md = ["", "Inspection metrics (test split, mean ± std over seeds"
          + (f"; defect = any class but `{ok}`" if ok else "; no ok/good class: defect metrics n/a") + "):", "",
          "| strategy | " + " | ".join(lab for _, lab in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    md += [f"| {n} | " + " | ".join(_fmt(*r[m]) for m, _ in cols) + " |" for n, r in rows.items()]
    return md


def _deliverable_md(spec: Any, target: str) -> list[str]:
    """Where the recommended model is: registered URI (target parent run tag) and the export command."""
    runs = tracker_for(spec).find_runs({"rtl.kind": "target", "rtl.target": target})
    tags = runs[0].data.tags if runs else {}
    if not tags.get("rtl.model_dir"):
        return []
    ref = tags.get("rtl.champion_control")
    what = f"the {ref} reference (see the verdict)" if ref else "the best configuration"
    return ["", f"Model of {what}: `{tags['rtl.model_dir']}`"
            + (f", registered as `{tags['rtl.champion']}` ({tags.get('rtl.registered_model', '')})"
               if tags.get("rtl.champion") else "")
            + f". Export: `rtl sweep export {spec.results_dir} --target {target} --out DIR`."]


def _importance_mass(results_dir: str, target: str, best: Any) -> dict[str, float] | None:
    """Per-source importance mass from the weights.json of the best trial (or the importance control)."""
    tracker = tracker_for(load_resolved(results_dir))
    runs = tracker.find_runs({"rtl.kind": "trial", "rtl.target": target})
    want = [best.user_attrs.get("rtl.tune_trial_id")] if best is not None else []
    ordered = [r for r in runs if r.data.tags.get("rtl.trial_id") in want] + \
              [r for r in runs if r.data.tags.get("rtl.control") == "importance"]
    for r in ordered:
        p = r.data.tags.get("rtl.weights_path")
        if p and os.path.exists(p):
            return json.loads(open(p).read()).get("datasets")
    return None


def _plots(out: str, s: dict[str, Any], mass: dict[str, float] | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    names = list(s["rows"])
    if names:
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3))
        x = np.arange(len(names))
        label = s["objective"].label if "objective" in s else "error"
        for off, key, lab in ((-0.2, "val", f"val {label}"), (0.2, "test", f"test {label}")):
            m = [s["rows"][n][key][0] for n in names]
            e = [s["rows"][n][key][1] for n in names]
            ax.bar(x + off, m, 0.4, yerr=e, label=lab, capsize=3)
        ax.set_xticks(x, names, rotation=20)
        ax.set_ylabel(label)
        ax.set_title(f"{s['target']}: {label} by strategy")
        ax.legend()
        fig.tight_layout()
        files.append(os.path.join(out, f"errors_{s['target']}.png"))
        fig.savefig(files[-1], dpi=90)
        plt.close(fig)
    if mass:
        items = sorted(mass.items(), key=lambda kv: -kv[1])
        fig, ax = plt.subplots(figsize=(0.5 * len(items) + 2, 3))
        ax.bar([k for k, _ in items], [v for _, v in items])
        ax.set_ylabel("importance mass")
        ax.set_title(f"{s['target']}: importance mass per source")
        ax.tick_params(axis="x", rotation=60)
        fig.tight_layout()
        files.append(os.path.join(out, f"importance_{s['target']}.png"))
        fig.savefig(files[-1], dpi=90)
        plt.close(fig)
    return files


def _kind(t: Any) -> str:
    """A trial's kind in the table: its control, the ranking trial it was enqueued as, or "search"."""
    if t.user_attrs.get("rtl.control"):
        return t.user_attrs["rtl.control"]
    label = t.user_attrs.get("rtl.enqueued", "")
    if is_importance_trial(label):
        top = "" if label == IMPORTANCE_TRIAL else f"top-{t.params.get('k', '?')}, "
        cand = t.user_attrs.get("rtl.candidate")  # the best of several candidates (rtl.sweep.candidates)
        if cand:  # several compared: "2 source(s) at T=1, seed 1 (candidate 2 of 3, ...)"; one: "on ..."
            return f"importance, {top}from scratch, " + (f"best candidate: {cand}" if candidates_compared(cand) else cand)
        return f"importance, {top}from scratch (T={t.params.get('temperature', '?')})"
    if fine_tunes_importance_pretraining(t.params, label):  # no pretraining of its own
        return f"{'ranking' if label else 'search'}: importance trial's pretraining, lr {t.params.get('lr', 0):.3g}"
    return f"ranking {label}" if label else "search"


def _sources(t: Any) -> str:
    """The trial's mask; with importance weights, also the sources its pretraining drew 90 % of images from."""
    mask, eff = pretrained_sources(t.user_attrs), t.user_attrs.get("rtl.effective_sources")
    return f"{mask} (90 % of the weighted images: {eff})" if eff and eff != mask else mask


def trials_table(results_dir: str, target: str) -> list[str]:
    """Markdown rows: every trial of the target's study that counts (orphans of a killed driver excluded).
    A stopped trial shows its last intermediate value (a rung's probe error in the ranked space)."""
    obj = Objective.of(load_resolved(results_dir))
    rows = [f"| trial | kind | state | val {obj.label} | fine-tune epochs | sources |", "|---|---|---|---|---|---|"]
    for t in target_trials(results_dir, target):
        val = f"{obj.value(t.value):.4f}" if t.value is not None else (
            f"{list(t.intermediate_values.values())[-1]:.4f} (stopped)" if t.intermediate_values else "-")
        rows.append(f"| {t.number} | {_kind(t)} | {t.state.name.lower()} | "
                    f"{val} | {t.user_attrs.get('rtl.epochs', '-')} | {_sources(t)} |")
    return rows


def _verdict_md(spec: Any, target: str, s: dict[str, Any]) -> list[str]:
    """The verdict, and which model was delivered as champion (rtl.sweep.deliver.champion_choice)."""
    v, b = target_verdict(spec, target, s), s["best"]
    if v is None:
        return []
    out = ["", f"**Verdict:** {v['message']}."]
    if not v["chosen"] and v["recommend"] in REFERENCE_CONTROL:
        from rtl.sweep.deliver import champion_choice

        try:
            choice = champion_choice(spec, target, summary=s, verdict=v)
        except Exception:  # noqa: BLE001 -- the report must not fail on a damaged results dir
            choice = None
        if choice is not None and choice.control:
            out.append(f"The model delivered as champion is the {v['recommend']} reference (control trial "
                       f"#{choice.number}, seed {choice.seed}): the best searched trial (#{b.number}) is worse than "
                       f"it by more than the noise.")
        elif reference_beats_best(v):  # the reference's model folder is missing (an older sweep)
            out.append(f"The model delivered as champion is the best searched trial (#{b.number}), but it is worse "
                       f"than the {v['recommend']} by more than the noise and the {v['recommend']}'s model was not "
                       f"kept: fine-tune from the {v['recommend']} instead.")
        else:
            out.append(f"The model delivered as champion is still the best searched trial (#{b.number}): it is "
                       f"within seed noise of the {v['recommend']}, so either is a defensible deployment.")
    return out


def _specialists_md(results_dir: str, target: str) -> list[str]:
    """What the specialists said (a short from-scratch pretraining per source, probed on the target), from
    the importance trial that asked them (its `rtl.specialists` attribute); [] when none did."""
    for t in target_trials(results_dir, target):
        raw = t.user_attrs.get("rtl.specialists")
        if not raw:
            continue
        try:
            d = json.loads(raw)
            losses = sorted(d["probe_loss"].items(), key=lambda kv: kv[1])
            chosen = [str(u) for u in d["chosen"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        added, dropped = d.get("added") or {}, d.get("dropped") or {}
        cut = [u for u in chosen if u not in added]
        shown = ", ".join(f"{u} {float(v):.3f}" for u, v in losses[:max(len(chosen) + len(dropped) + 3, 5)])
        more = (f" + **{', '.join(added)}**, whose labels agree with {d.get('anchor')}'s (its specialist's "
                f"head on their images and theirs on its: kappa {', '.join(f'{float(k):.2f}' for k in added.values())})"
                if added else "")
        if dropped:
            more += "; dropped from the cut: " + "; ".join(f"{u} ({why})" for u, why in dropped.items())
        return ["", f"**Specialists** (each source alone, a short pretraining from scratch; target probe "
                f"log-loss, lower = its labels teach more of this target's): chose **{', '.join(cut)}** "
                f"(before the largest gap){more}; best probed: {shown}."]
    return []


def _effects_plot(spec: Any, results_dir: str, target: str, out: str) -> str | None:
    effects = source_effects(target_trials(results_dir, target), units_of(spec))
    return plot_effects(effects, os.path.join(out, f"source_effects_{target}.png"),
                        f"{target}: per-source effect over finished trials", f"val {Objective.of(spec).label}")


def write_report(results_dir: str, *, log_mlflow: bool = True) -> str:
    """Write report.md + PNGs under `<results>/report`; returns the Markdown path."""
    spec = load_resolved(results_dir)
    out = report_dir(spec.results_dir)
    os.makedirs(out, exist_ok=True)
    obj = Objective.of(spec)
    md = [f"# Sweep `{spec.name}`", "", f"Backbone `{spec.backbone}`, {spec.budget.trials_per_target} trials per "
          f"target, seeds {spec.seeds}. Objective: **{obj.label}** (spec `objective: {obj.name}`, "
          f"{'lower' if obj.lower_is_better else 'higher'} is better). Chosen by **val** {obj.label}; "
          f"test {obj.label} is reported only.", ""]
    per_target_files: dict[str, list[str]] = {}
    for target in spec.target_names():
        s = summarize_target(results_dir, target)
        b = s["best"]
        md += [f"## {target}", ""]
        if b is None:
            md += ["No searched trial completed yet.", ""]
        else:
            p = b.params
            md += [f"Best searched trial #{b.number}: sources **{pretrained_sources(b.user_attrs, None)}**, temperature "
                   f"{('{:.3g}'.format(p['temperature'])) if 'temperature' in p else 'off'}, lr {p['lr']:.3g}, freeze depth {p.get('freeze_depth', 0)}, "
                   f"regulariser {p.get('regularizer', 'none')}"
                   + (f" ({p['reg_strength']:.3g})" if "reg_strength" in p else "") + ".", ""]
        md += [f"| strategy | val {obj.label} | test {obj.label} |", "|---|---|---|"]
        md += [f"| {n} | {_fmt(*r['val'])} | {_fmt(*r['test'])} |" for n, r in s["rows"].items()]
        if b is not None:
            n_best = s["rows"]["best (search)"]["val"][2]
            if len(spec.seeds) == 1:
                md += ["", "Single seed: every row is n=1 (no spread; add seeds to the spec for mean ± std)."]
            elif n_best < len(set(spec.seeds)):
                md += ["", f"Best configuration: n={n_best} of {len(set(spec.seeds))} seeds (confirm trials "
                       f"missing or unfinished: run `rtl sweep resume`)."]
        md += _inspection_md(*inspection_summary(results_dir, target, b))
        md += _deliverable_md(spec, target)
        if s["gains"]:
            md += ["", f"Gain of the best searched configuration (improvement of mean test {obj.label} over seeds): "
                   + ", ".join(f"vs {k}: {v:+.3f}" for k, v in s["gains"].items())]
        md += _verdict_md(spec, target, s)
        md += _specialists_md(results_dir, target)
        md += ["", *trials_table(results_dir, target)]
        files = _plots(out, s, _importance_mass(results_dir, target, b))
        eff = _effects_plot(spec, results_dir, target, out)
        if eff:
            files.append(eff)
        md += [""] + [f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in files] + [""]
        per_target_files[target] = files
    path = os.path.join(out, REPORT_MD)
    with open(path, "w") as f:
        f.write("\n".join(md) + "\n")
    if log_mlflow:
        tracker = tracker_for(spec)
        for target, files in per_target_files.items():
            run = tracker.get_or_create_target_run(target)
            for fpath in [path, *files]:
                tracker.log_artifact(run, fpath, "report")
    return path
