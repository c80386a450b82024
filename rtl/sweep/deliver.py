"""Keep the best model of a sweep: per-trial model folders, pruning, export, registration.

Layout: `<results>/models/<target>/trial_<number:04d>_seed<seed>/` (a model folder, rtl.deliver.model;
the names are rtl.artifacts.layout). Lives in the sweep layer (it reads the sweep's Optuna study and
registers in MLflow); rtl.deliver below it knows nothing of sweeps.
- Every finished trial logs its inspection metrics (target's test split, val when there is none) to its
  MLflow run; every *searched* and confirm trial also writes its fine-tuned model (`save_trial_model`,
  called from rtl.sweep.trial.run_trial), and so do the two reference controls the verdict may recommend
  (`generalist`, `uniform` = all sources); the other controls (scratch, ImageNet, importance) keep none.
- After a target's search and confirm runs, `deliver_target` (called by the runner) picks the champion
  (`champion_choice`): the best searched configuration (`rtl.sweep.status.best_searched`, the trial the
  report and the confirm runs use), unless the verdict's null (rtl.sweep.verdict) finds it worse than
  the recommended reference by more than 2σ of seed noise -- then that reference's best seed, so the
  registered model is the one the report recommends. It deletes every other folder except the next
  `keep_top - 1` searched trials (disk stays bounded), registers the champion in MLflow and fills the
  target's parent run.
- `rtl sweep export RESULTS --target T --out DIR` copies the champion folder out (verified on the way).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from rtl.artifacts import layout
from rtl.artifacts.checkpoint import read_checkpoint_meta
from rtl.artifacts.layout import MODELS, model_folder_name
from rtl.artifacts.model_folder import MODEL_FILE, is_model_folder, read_model_meta
from rtl.deliver.finetuned import finetune_metrics, finetune_model_folder
from rtl.errors import RtlError
from rtl.sweep.objective import Objective  # best seed on the spec's objective (val_<m> of the folder)
from rtl.sweep.spec import load_resolved
from rtl.sweep.status import best_searched, target_trials
from rtl.sweep.tracking import publish_champion

log = logging.getLogger(__name__)

__all__ = ["MODELS", "models_dir", "model_folder_name", "save_trial_model", "kept_models", "prune_models",
           "champion_choice", "deliver_target", "export_best"]

KEPT_CONTROLS = ("generalist", "uniform")  # the verdict's references: deliverable when they beat the search


def models_dir(results_dir: str, target: str) -> Path:
    return Path(layout.models_dir(results_dir, target))


def _loggable(metrics: dict[str, Any]) -> dict[str, float]:
    split = metrics["eval_split"]
    return {k: v for k, v in metrics.items() if k.startswith(f"{split}_") and isinstance(v, float) and v == v
            and not k.endswith(("_n", "max_false_alarm"))}


def save_trial_model(spec: Any, target: str, t: dict[str, Any], cfg: Any, res: Any, *, tracker: Any = None,
                     run_id: str | None = None, tags: dict[str, Any] | None = None) -> Path | None:
    """Called by run_trial after fine-tuning: log the inspection metrics of every trial to its MLflow run
    and keep the model folder of searched/confirm trials (controls keep none: baselines are never the
    recommendation). Never fails the trial: problems are logged as warnings."""
    if res.model_state is None:
        return None
    ok_cfg = getattr(spec, "ok_class", None)
    far = float(getattr(spec, "max_false_alarm", 0.05))  # the spec's rate, as the objective uses
    try:
        if t.get("control") and t.get("control") not in KEPT_CONTROLS:
            _, _, ok, metrics = finetune_metrics(cfg, res, ok_class=ok_cfg, max_false_alarm=far)
            path = None
        else:
            out = models_dir(spec.results_dir, target) / model_folder_name(t["number"], t["seed"])
            prov = {"sweep": spec.name, "target": target, "trial": int(t["number"]), "kind": t.get("kind", "search"),
                    "control": t.get("control") or None,
                    "sources": t.get("mask"), "temperature": t.get("temperature"), "init": t.get("init"),
                    "mlflow_run_id": run_id, **{k: v for k, v in (tags or {}).items() if k.startswith("rtl.")}}
            try:
                prov["corpus_version"] = read_checkpoint_meta(cfg.init).corpus_version
            except RtlError:
                prov["corpus_version"] = None
            path, metrics = finetune_model_folder(out, cfg, res, provenance=prov, ok_class=ok_cfg,
                                                     max_false_alarm=far)
            ok = read_model_meta(path, verify=False)["ok_class"]
        if tracker is not None and run_id is not None:
            tracker.log_metrics(run_id, _loggable(metrics))
            tracker.set_tags(run_id, {"rtl.ok_class": ok or "", "rtl.eval_split": metrics["eval_split"]}
                             | ({"rtl.model_dir": str(path),
                                 "rtl.model_sha256": read_model_meta(path, verify=False)["sha256"][MODEL_FILE]}
                                if path else {}))
        return path
    except Exception as e:  # the trial's result stands even if its model/metrics could not be kept
        log.warning("trial %s: model folder / inspection metrics not saved: %s", t.get("number"), e)
        return None


def kept_models(results_dir: str, target: str, number: int | list[int]) -> list[tuple[Path, dict[str, Any]]]:
    """Model folders of trial `number` (all seeds; or of several trials, e.g. a control's one per seed),
    best val objective first (ties: lower seed)."""
    out = []
    for n in ([number] if isinstance(number, int) else number):
        for d in sorted(models_dir(results_dir, target).glob(f"trial_{n:04d}_seed*")):
            try:
                meta = read_model_meta(d, verify=False)
            except RtlError:
                continue
            out.append((d, meta))
    try:
        obj = Objective.of(load_resolved(results_dir))
    except RtlError:  # a models folder outside a sweep's results dir: val error, as before objectives
        obj = Objective()

    def key(dm: tuple[Path, dict[str, Any]]) -> tuple[float, int]:
        m = dm[1]["metrics"]
        v = obj.loss(m.get(f"val_{obj.key}"))  # val_error under the default objective
        return (v if math.isfinite(v) else math.inf, int(dm[1]["provenance"].get("seed") or 0))

    return sorted(out, key=key)


def prune_models(results_dir: str, target: str, keep_numbers: set[int]) -> list[Path]:
    """Delete model folders of trials not in `keep_numbers` (and stale temp folders). -> deleted."""
    gone = []
    root = models_dir(results_dir, target)
    if not root.is_dir():
        return gone
    for d in root.iterdir():
        name = d.name
        num = int(name[6:10]) if name.startswith("trial_") and name[6:10].isdigit() else None
        if name.startswith(".") or num not in keep_numbers:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


class Choice(NamedTuple):
    """The champion of a target: Optuna trial `number` (its `seed`), `control` = "" for the best searched
    configuration, else the reference control the verdict recommended over it; `kept` = its model folders
    (best val first)."""

    number: int
    seed: int
    control: str
    kept: list[tuple[Path, dict[str, Any]]]


def champion_choice(spec: Any, target: str, *, summary: dict[str, Any] | None = None,
                    verdict: dict[str, Any] | None = None) -> Choice | None:
    """What `deliver_target` registers and `rtl sweep export` copies: the best searched configuration,
    unless it is worse than the verdict's recommended reference (generalist alone / all sources) by more
    than 2σ of seed noise and that reference kept a model folder. None: no searched trial completed."""
    from rtl.sweep.verdict import reference_beats_best, summarize_target, target_verdict

    best = best_searched(spec.results_dir, target)
    if best is None:
        return None
    kept = kept_models(spec.results_dir, target, best.number)
    try:
        if verdict is None:
            verdict = target_verdict(spec, target, summary if summary is not None
                                     else summarize_target(spec.results_dir, target))
        ref = reference_beats_best(verdict)
    except Exception as e:  # noqa: BLE001 - the verdict needs MLflow; without it the search's best stands
        log.warning("%s: verdict unavailable (%s): delivering the best searched trial", target, e)
        ref = None
    if ref:
        numbers = [t.number for t in target_trials(spec.results_dir, target)
                   if t.state.name == "COMPLETE" and t.user_attrs.get("rtl.control") == ref]
        ref_kept = kept_models(spec.results_dir, target, numbers)
        if ref_kept:
            prov = ref_kept[0][1]["provenance"]
            return Choice(int(prov["trial"]), int(prov.get("seed") or 0), ref, ref_kept)
    seed = int(kept[0][1]["provenance"].get("seed") or 0) if kept else int(best.user_attrs.get("rtl.seed", 0))
    return Choice(best.number, seed, "", kept)


def deliver_target(spec: Any, target: str, *, keep_top: int | None = None) -> Path | None:
    """After a target's search + confirms: prune to the best configurations, register the champion in
    MLflow (`<sweep>.<target>`, alias `champion`), put its metrics on the target's parent run.
    -> the champion's model folder (None when no searched trial completed). Safe to call again (resume)."""
    best = best_searched(spec.results_dir, target)
    if best is None:
        return None
    keep_top = keep_top or int(getattr(spec, "keep_models", 1) or 1)
    choice = champion_choice(spec, target)
    assert choice is not None  # a best searched trial exists
    done = sorted((t for t in target_trials(spec.results_dir, target)
                   if t.state.name == "COMPLETE" and not t.user_attrs.get("rtl.control")), key=lambda t: (t.value, t.number))
    keep = {best.number} | {t.number for t in done[:keep_top]} | {int(m["provenance"]["trial"]) for _, m in choice.kept}
    prune_models(spec.results_dir, target, keep)
    if not choice.kept:
        print(f"[{target}] best trial #{best.number} kept no model folder (finished before models were kept?)",
              flush=True)
        return None
    path, meta = choice.kept[0]
    if choice.control:
        print(f"[{target}] the best searched trial #{best.number} is worse than the {choice.control} reference by "
              f"more than the seed noise: delivering the {choice.control} (trial #{choice.number})", flush=True)
    try:
        from rtl.sweep.trial import tracker_for  # local: trial imports this module (save_trial_model)

        name = getattr(spec, "registry_name", None) or f"{spec.name}.{target}"
        version = publish_champion(tracker_for(spec), target, str(path), meta, registered_name=name,
                                   best_trial=choice.number, spec_json=layout.spec_path(spec.results_dir))
        print(f"[{target}] champion: trial #{choice.number} -> models:/{name}@champion (version {version})", flush=True)
    except Exception as e:  # the sweep's results stand; `rtl sweep export` still works from the folder
        print(f"[{target}] warning: model not registered in MLflow: {type(e).__name__}: {e}".splitlines()[0],
              flush=True)
    return path


def export_best(results_dir: str, target: str, out: str | Path, *, seed: int | None = None) -> Path:
    """Copy the champion's model folder of `target` (`champion_choice`: the best searched configuration, or
    the reference the verdict recommends over it) to `out` (verified, atomic)."""
    spec = load_resolved(results_dir)
    if target not in spec.target_names():
        raise RtlError(f"--target {target!r}: not a target of sweep {spec.name!r} ({', '.join(spec.target_names())})")
    choice = champion_choice(spec, target)
    if choice is None:
        raise RtlError(f"{target}: no searched trial has completed yet (see `rtl sweep status {results_dir}`)")
    kept = choice.kept
    if seed is not None:
        kept = [(d, m) for d, m in kept if m["provenance"].get("seed") == seed]
    if not kept:
        raise RtlError(f"{target}: no model folder kept for champion trial #{choice.number}"
                       + (f" and seed {seed}" if seed is not None else "")
                       + f" under {models_dir(results_dir, target)}")
    src = kept[0][0]
    read_model_meta(src)  # refuse to copy a tampered folder
    out = Path(out)
    if out.exists() and not is_model_folder(out):
        raise RtlError(f"--out {out}: exists and is not a model folder; choose a new path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        shutil.copytree(src, tmp / "m")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "m", out)
        shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise RtlError(f"cannot write {out}: {e.strerror or e}") from None
    return out
