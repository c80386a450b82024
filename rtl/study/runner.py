"""`rtl study run SPEC`: every cell of the study grid as one Ray Tune trial (a `grid_search`), once.

Cells = targets x strategy rows x train sizes x modes x seeds. They are ordered so neighbouring cells
differ in strategy first: the first `max_concurrent` cells then build different pretrainings in
parallel instead of waiting on one another's cache lock.

* Pretraining comes from the workspace's content-addressed cache (rtl.sweep.cache) through the sweep's
  own `prepare_init`: one pretraining per strategy row (plus, for `weighted`, one per target, because
  importance weights depend on the target), never per cell; every seed and size of a row shares it
  (`pretrain_seed`). Importance weights are computed from the generalist's predictions on the target's
  whole train split (no target labels are used), so all train sizes share one weighted pretraining.
  `imagenet` / `imagenet_then_source` rows run only where local ImageNet weights exist; otherwise they are
  listed as skipped (with the reason) in `plan.json` and the report, never downloaded.
* The train size is a stratified, seeded, nested subset (rtl.data.subsample) drawn with the cell's seed;
  val and test are the target's own, so errors across sizes are comparable.
* MLflow (rtl.artifacts.tracking.Tracker): experiment `study-<name>`, a parent run `rtl.kind=study`, one
  child run per cell (`rtl.kind=cell`, tag `rtl.cell`), pretraining runs linked by `rtl.pretrain_run_id`.
* Resume: running the same spec again restores the Tune experiment (`Tuner.restore`), so finished cells
  are not scheduled again; and a cell whose MLflow run already holds its result (`rtl.final`) re-reports it
  instead of fine-tuning (a driver killed before Tune's last state write loses no finished cell).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rtl.artifacts.layout import spec_path
from rtl.artifacts.manifest import is_corpus
from rtl.errors import ConfigError, RtlError, RtlRuntimeError
from rtl.study.spec import StudySpec, load_resolved, save_resolved

EXPERIMENT = "ray_results/study"


def sweep_view(spec: StudySpec) -> Any:
    """The study as a `SweepSpec` for the sweep's pretraining helpers (same cache keys as sweeps)."""
    from rtl.sweep.spec import Budget, Storage, SweepSpec

    b = spec.budget
    return SweepSpec(name=spec.name, workspace=spec.workspace, corpus=spec.corpus, targets=spec.targets,
                     backbone=spec.backbone, image=spec.image, resources=spec.resources, spec_file=spec.spec_file,
                     budget=Budget(pretrain_epochs=b.pretrain_epochs, pretrain_budget=b.pretrain_budget,
                                   finetune_epochs=b.finetune_epochs, batch_size=b.batch_size,
                                   max_concurrent=b.max_concurrent),
                     storage=Storage(cache=spec.storage.cache, tracking_uri=spec.storage.tracking_uri))


def study_tracker(spec: StudySpec) -> Any:
    from rtl.artifacts.tracking import Tracker, default_tracking_uri

    uri = default_tracking_uri(spec.results_dir, spec.storage.tracking_uri)
    art = None if uri.startswith(("http", "databricks")) else os.path.join(spec.results_dir, "mlartifacts")
    return Tracker(uri, f"study-{spec.name}", art)


def study_run(tracker: Any) -> str:
    return tracker.get_or_create({"rtl.kind": "study"}, {}, "study")


def cell_runs(tracker: Any) -> list[Any]:
    return tracker.find_runs({"rtl.kind": "cell"})


# ---- plan ---------------------------------------------------------------------------------------------
def _imagenet_problem(backbone: str) -> str | None:
    try:
        from rtl.models.backbones import imagenet_state_dict

        imagenet_state_dict(backbone)
        return None
    except RtlError as e:
        return str(e)


def resolve_rows(spec: StudySpec) -> dict[str, dict[str, Any]]:
    """row label -> {strategy, masks: {target: pretraining datasets | None}, temperature, available, reason}."""
    from rtl.data.convention import load_dataset
    from rtl.train.strategies import STRATEGIES, open_view

    m = open_view(spec.corpus_path()).manifest
    datasets = sorted(m["datasets"])
    dom = {n: set(v.get("domain", [])) for n, v in m["datasets"].items()}
    tags = sorted(set().union(*dom.values())) if dom else []
    tdom = {n: set(load_dataset(p).domain) for n, p in zip(spec.target_names(), spec.target_paths())}
    rows: dict[str, dict[str, Any]] = {}
    for i, s in enumerate(spec.strategies):
        st = STRATEGIES.get(s.name)
        where = f"{spec.spec_file}: strategies.{i}"
        masks: dict[str, list[str] | None] = {t: None for t in tdom}
        if st.trains:
            if s.datasets:
                bad = [d for d in s.datasets if d not in datasets]
                if bad:
                    raise ConfigError(f"{where}.datasets: {bad[0]!r} not in the corpus; valid: {', '.join(datasets)}")
                masks = {t: sorted(s.datasets) for t in tdom}
            elif s.domains:
                bad = [d for d in s.domains if d not in tags]
                if bad:
                    raise ConfigError(f"{where}.domains: {bad[0]!r} not a corpus domain; valid: {', '.join(tags)}")
                masks = {t: sorted(n for n in datasets if dom[n] & set(s.domains)) for t in tdom}
            elif s.target_domain:
                same = s.target_domain == "same"
                masks = {t: sorted(n for n in datasets if bool(dom[n] & td) == same) for t, td in tdom.items()}
                empty = [t for t, v in masks.items() if not v]
                if empty:
                    raise ConfigError(f"{where}.target_domain: no corpus source is in the "
                                      f"{'same' if same else 'other'} domain as target {empty[0]!r}")
            else:
                masks = {t: datasets for t in tdom}
        problem = _imagenet_problem(spec.backbone) if st.init == "imagenet" else None
        rows[s.row] = {"strategy": s.name, "masks": masks, "temperature": s.temperature,
                       "full": st.trains and not (s.datasets or s.domains or s.target_domain),
                       "available": problem is None, "reason": problem or ""}
    return rows


def plan_study(spec: StudySpec) -> dict[str, Any]:
    """Cells, skipped rows and per-target size notes (classes smaller than a per-class size)."""
    from rtl.data.convention import load_dataset
    from rtl.data.subsample import subsample_train

    rows = resolve_rows(spec)
    live = [r for r, v in rows.items() if v["available"]]
    skipped = [{"row": r, "reason": v["reason"]} for r, v in rows.items() if not v["available"]]
    sizes, kind = spec.train_sizes.values, spec.train_sizes.kind
    notes: dict[str, dict[str, Any]] = {}
    for name, path in zip(spec.target_names(), spec.target_paths()):
        train = load_dataset(path).split("train")
        if not train:
            raise RtlError(f"{spec.spec_file}: targets: {name}: no train images (ImageSets/Main/train.txt)")
        subs = {f"{s:g}": subsample_train(train, s, kind=kind, seed=spec.seeds[0]) for s in sizes}
        notes[name] = {"classes": sorted({r.label for r in train}),
                       "n_train": {k: len(v.paths) for k, v in subs.items()},
                       "capped": {k: v.capped for k, v in subs.items() if v.capped}}
    cells = []
    for seed in spec.seeds:
        for mode in spec.modes:
            for size in sizes:
                for target in spec.target_names():
                    for row in live:
                        cells.append({"index": len(cells), "target": target, "row": row, "size": size,
                                      "mode": mode.name, "seed": seed,
                                      "id": f"{target}|{row}|{size:g}|{mode.name}|seed{seed}"})
    if not cells:
        raise ConfigError(f"{spec.spec_file}: the study grid is empty: every strategy row is unavailable ("
                          + "; ".join(f"{s['row']}: {s['reason']}" for s in skipped) + ")")
    return {"rows": rows, "skipped": skipped, "size_kind": kind, "sizes": sizes, "targets": notes, "cells": cells}


def load_plan(results_dir: str) -> dict[str, Any]:
    try:
        return json.loads(Path(results_dir, "plan.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{results_dir}: no readable plan.json (run `rtl study run` first)") from None


# ---- one cell (the Tune trainable) ----------------------------------------------------------------------
def cell_init(spec: StudySpec, row: dict[str, Any], target: str, tracker: Any) -> tuple[str, dict[str, str]]:
    """Fine-tune init of a row for a target: "scratch" | "imagenet" | a cached pretrained checkpoint (+ tags)."""
    from rtl.sweep.trial import prepare_init

    if row["strategy"] in ("scratch", "imagenet"):
        return row["strategy"], {}
    sw = sweep_view(spec)
    mask = row["masks"][Path(target).name]
    if row["strategy"] == "imagenet_then_source":
        return _imagenet_then_source(sw, mask, spec.pretrain_seed, tracker)
    t = {"init": "pretrained", "mask": mask, "seed": spec.pretrain_seed, "temperature": row["temperature"]}
    return prepare_init(sw, t, target, tracker)


def _imagenet_then_source(sw: Any, mask: list[str], seed: int, tracker: Any) -> tuple[str, dict[str, str]]:
    """ImageNet init, then the corpus view: the sweep's cache with the strategy in the schedule key."""
    from rtl.sweep.cache import PretrainCache, cache_key
    from rtl.sweep.trial import _linked, _pretrain, _schedule
    from rtl.train.strategies import open_view

    mask = list(mask)
    key = cache_key(corpus_version=open_view(sw.corpus_path()).version, mask=mask, temperature=None,
                    backbone=sw.backbone, schedule=_schedule(sw) | {"strategy": "imagenet_then_source"}, seed=seed)
    runs = Path(sw.cache_dir()) / "runs"
    d = PretrainCache(sw.cache_dir()).get_or_create(
        key, lambda d: _pretrain(sw, d / "ckpt", runs, seed, "imagenet_then_source", mask))
    return _linked(str(d / "ckpt"), key, mask, None, tracker, {"rtl.cache_key": key})


def _report(metrics: dict[str, Any]) -> None:
    from ray import tune

    tune.report(metrics)


def run_cell(config: dict[str, Any]) -> None:
    """Tune function trainable: config = {"rtl": {"results_dir"}, "cell": one entry of plan["cells"]}."""
    import torch

    from rtl.artifacts.tracking import retry as _retry
    from rtl.data.convention import load_dataset
    from rtl.data.subsample import subsample_train
    from rtl.train.finetune import FinetuneConfig, run_finetune

    rd, cell = config["rtl"]["results_dir"], config["cell"]
    spec, plan = load_resolved(rd), load_plan(rd)
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    target = dict(zip(spec.target_names(), spec.target_paths()))[cell["target"]]
    row, mode = plan["rows"][cell["row"]], spec.mode(cell["mode"])
    tracker = study_tracker(spec)
    run_id = tracker.get_or_create(
        {"rtl.kind": "cell", "rtl.cell": cell["id"]},
        {"mlflow.parentRunId": study_run(tracker), "rtl.target": cell["target"], "rtl.strategy": cell["row"],
         "rtl.size": f"{cell['size']:g}", "rtl.mode": cell["mode"], "rtl.seed": cell["seed"]}, cell["id"])
    prior = _retry(tracker.client.get_run)(run_id).data.tags.get("rtl.final")
    if prior:  # finished before: never fine-tuned again
        tracker.finish(run_id)
        _report(json.loads(prior))
        return
    tracker._set_status(run_id, "RUNNING")
    sub = subsample_train(load_dataset(target).split("train"), cell["size"], kind=plan["size_kind"],
                          seed=int(cell["seed"]))
    tracker.log_params(run_id, {"target": cell["target"], "strategy": row["strategy"], "row": cell["row"],
                                "mask": ",".join(row["masks"][cell["target"]] or []) or "none",
                                "temperature": row["temperature"] if row["temperature"] is not None else "off",
                                "size": f"{cell['size']:g}", "size_kind": plan["size_kind"],
                                "n_train": len(sub.paths), "mode": mode.name, "probe": mode.probe,
                                "freeze_depth": mode.freeze_depth, "lr": mode.lr, "seed": cell["seed"],
                                "backbone": spec.backbone, "epochs": spec.budget.finetune_epochs})
    init, tags = cell_init(spec, row, target, tracker)
    starts = int(_retry(tracker.client.get_run)(run_id).data.tags.get("rtl.finetune_starts", 0)) + 1
    tracker.set_tags(run_id, tags | {"rtl.init": init, "rtl.finetune_starts": starts})
    logged = {m.step for m in _retry(tracker.client.get_metric_history)(run_id, "val_error")}

    def on_epoch(epoch: int, m: dict[str, Any]) -> bool:
        if epoch + 1 not in logged:
            tracker.log_metrics(run_id, {k: m[k] for k in ("train_loss", "val_error") if k in m}, step=epoch + 1)
        return False

    ft = FinetuneConfig(target=target, init=init, model=spec.backbone, lr=mode.lr, freeze_depth=mode.freeze_depth,
                        probe=mode.probe, epochs=spec.budget.finetune_epochs, seed=int(cell["seed"]),
                        batch_size=spec.budget.batch_size, min_side=spec.image.min_side,
                        max_side=spec.image.max_side, device="cuda" if spec.resources.gpus > 0 else "cpu",
                        train_subset=list(sub.paths))
    res = run_finetune(ft, on_epoch=on_epoch)
    final = {"val_error": float(res.val_error), "test_error": res.test_error, "n_train": len(sub.paths),
             "finished": True}
    tracker.set_tags(run_id, {"rtl.final": json.dumps(final)})
    tracker.log_metrics(run_id, {"final_val_error": final["val_error"], "final_test_error": final["test_error"],
                                 "n_train": len(sub.paths)})
    tracker.finish(run_id)
    _report(final)


# ---- driver ---------------------------------------------------------------------------------------------
def _callbacks(total: int) -> list[Any]:
    from ray import tune

    class Progress(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            done = sum(t.status == "TERMINATED" for t in trials if t is not trial) + 1
            r = trial.last_result or {}
            print(f"[{done}/{total}] {trial.config['cell']['id']}: val {r.get('val_error', float('nan')):.3f} "
                  f"test {r.get('test_error') if r.get('test_error') is not None else float('nan'):.3f}", flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"cell errored: {trial.config['cell']['id']} (see {trial.path}/error.txt)", flush=True)

    from ray.tune.logger import JsonLoggerCallback

    return [Progress(), JsonLoggerCallback()]  # result.json per cell (Tune reads it back at the end)


def _dirname(trial: Any) -> str:
    return f"cell_{trial.config['cell']['index']:04d}_{trial.trial_id}"


def _tuner(spec: StudySpec, cells: list[dict[str, Any]], exp_path: str) -> Any:
    from ray import tune

    r = spec.resources
    return tune.Tuner(
        tune.with_resources(run_cell, {"cpu": r.cpus, "gpu": r.gpus}),
        param_space={"rtl": {"results_dir": spec.results_dir}, "cell": tune.grid_search(cells)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.budget.max_concurrent,
                                    trial_dirname_creator=_dirname, trial_name_creator=_dirname, reuse_actors=True),
        run_config=tune.RunConfig(name=os.path.basename(exp_path), storage_path=os.path.dirname(exp_path), verbose=0,
                                  callbacks=_callbacks(len(cells)), failure_config=tune.FailureConfig(max_failures=1)))


def _check_inputs(spec: StudySpec) -> None:
    if not is_corpus(spec.corpus_path()):
        raise RtlError(f"{spec.spec_file}: corpus: no corpus at {spec.corpus_path()} (run `rtl corpus build` first)")
    for name, path in zip(spec.target_names(), spec.target_paths()):
        if not os.path.isfile(os.path.join(path, "dataset.yaml")):
            raise RtlError(f"{spec.spec_file}: targets: {name}: no dataset at {path}")


def _dedupe_pretrain_runs(tracker: Any) -> None:
    """Two cells that got the same cached pretraining at the same moment can both create its MLflow run
    (find-or-create is not atomic across processes): keep the oldest per cache key, re-link, delete the rest."""
    from rtl.artifacts.tracking import retry as _retry

    first: dict[str, str] = {}
    for r in tracker.find_runs({"rtl.kind": "pretrain"}):  # oldest first
        key = r.data.tags.get("rtl.cache_key", "")
        if key not in first:
            first[key] = r.info.run_id
            continue
        for c in tracker.find_runs({"rtl.kind": "cell", "rtl.pretrain_run_id": r.info.run_id}):
            tracker.set_tags(c.info.run_id, {"rtl.pretrain_run_id": first[key]})
        _retry(tracker.client.delete_run)(r.info.run_id)


def run_study(spec: StudySpec, *, address: str | None = None) -> str:
    """Run (or continue) the study; returns its results dir."""
    from ray import tune

    from rtl.raystart import ensure_ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    _check_inputs(spec)
    rd = spec.results_dir
    spec_json = spec_path(rd)
    if os.path.exists(spec_json):
        old = load_resolved(rd).model_dump(exclude={"spec_file"})
        new = spec.model_dump(exclude={"spec_file"})
        if old != new:
            diff = sorted(k for k in old if old[k] != new[k])
            raise RtlError(f"{rd}: a study named {spec.name!r} already ran with a different spec ({', '.join(diff)} "
                           "differ); rename the study to start a new one")
    plan = plan_study(spec)
    save_resolved(spec, spec_json)
    Path(rd, "plan.json").write_text(json.dumps(plan, indent=1))
    for s in plan["skipped"]:
        print(f"skip {s['row']}: {s['reason']}", flush=True)
    for target, note in plan["targets"].items():
        for size, capped in note["capped"].items():
            print(f"note {target}: size {size}/class: " + ", ".join(f"{c} has {n}" for c, n in capped.items())
                  + " (all used)", flush=True)
    tracker = study_tracker(spec)
    study_run(tracker)  # created by the driver: cells never race to create it
    ensure_ray(address)
    exp = os.path.join(rd, EXPERIMENT)
    n = len(plan["cells"])
    if tune.Tuner.can_restore(exp):
        print(f"resuming {exp} ({n} cells)", flush=True)
        tuner = tune.Tuner.restore(exp, trainable=tune.with_resources(
            run_cell, {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}),
            resume_unfinished=True, resume_errored=True, restart_errored=False)
    else:
        print(f"study {spec.name}: {n} cells on Ray Tune", flush=True)
        tuner = _tuner(spec, plan["cells"], exp)
    errored = [str(r.path) for r in tuner.fit() if r.error is not None]
    _dedupe_pretrain_runs(tracker)
    print(f"results: {rd}\nreport:  rtl study report {rd}", flush=True)
    if errored:
        raise RtlRuntimeError(f"{len(errored)} cell(s) errored (see error.txt in {errored[0]}); finished cells "
                              f"are kept: run the same spec again to retry them")
    return rd
