"""`rtl sweep run` / `resume`: one Optuna study per target driven through Ray Tune with ASHA.

Targets run one after another, each as its own Tune experiment `<results>/ray_results/<target>` with its
own ASHA (val errors of different targets are not comparable, so they must not share rungs) and its own
study `<sweep name>/<target>` in the RDB storage. Resume = for each target, `Tuner.restore` when its
experiment exists (finished targets restore as no-ops), a fresh Tuner otherwise.

Why our own searcher (rtl.sweep.search) instead of OptunaSearch: pruned trials reach Optuna as PRUNED,
state goes straight to the RDB storage, and trials lost with a killed driver are re-enqueued, so the
history is intact and the number of trials per target equals the spec. Control trials (scratch,
uniform, importance, ImageNet when weights exist; one per seed) are enqueued first in the study.
After a target's search finished, when the spec has more than one seed, the best searched configuration
is re-run once per other seed as "confirm" trials (`confirm_configs`), in a second Tune experiment
`<results>/ray_confirm/<target>/trial_<best number>` (FIFO, no searcher). They are not Optuna trials, so
the search's trial count still equals the spec, and the report gets mean ± std over seeds for the best
configuration as for the controls. Resume restores that experiment (finished confirm trials not re-run).
Tune checkpoints its experiment state every `TUNE_GLOBAL_CHECKPOINT_S` (we default it to 2 s; state is
tiny) to shrink the window in which a killed driver loses trial bookkeeping.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rtl.artifacts.layout import RAY_RESULTS, ranking_path, spec_path
from rtl.artifacts.manifest import MANIFEST_FILE
from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams, importance_label
from rtl.errors import RtlError, RtlRuntimeError
from rtl.sweep.search import (
    METRIC,
    OptunaAskTell,
    control_params,
    define_space,
    importance_lr_params,
    importance_trial_params,
    keep_tuner_copy,
    objective_of,
    ranking_params,
    repair_experiment_files,
    repair_lagging_checkpoints,
)
from rtl.sweep.spec import SweepSpec, join, load_resolved, ranking_method, save_resolved
from rtl.sweep.status import best_searched, confirm_experiment
from rtl.sweep.trial import run_trial, tracker_for, units_of


def study_name(spec: SweepSpec, target: str) -> str:
    return f"{spec.name}/{target}"


def imagenet_available(backbone: str) -> bool:
    try:
        from rtl.models.backbones import imagenet_state_dict

        imagenet_state_dict(backbone)
        return True
    except (RtlError, Exception):
        return False


def controls_for(spec: SweepSpec, units: list[str]) -> list[tuple[str, int, dict[str, Any]]]:
    """Enqueued trials: controls (one per seed; never stopped), then in the ranked space the top-1/2/3
    of the ranking with default fine-tune settings ("top-k", searched: the search starts where the
    evidence points), as many as the budget leaves room for."""
    c = spec.controls
    names = [n for n in ("scratch", "generalist", "uniform", "importance") if getattr(c, n)]
    if c.imagenet is True or (c.imagenet == "auto" and imagenet_available(spec.backbone)):
        names.append("imagenet")
    out = [(n, s, control_params(n, spec, units)) for n in names for s in spec.seeds]
    if len(out) >= spec.budget.trials_per_target:
        raise RtlError(f"{spec.spec_file}: budget.trials_per_target: {spec.budget.trials_per_target} leaves no "
                       f"searched trial after {len(out)} control trials ({', '.join(names)} x {len(spec.seeds)} seeds)")
    if spec.search.sources.space == "ranked":
        room = spec.budget.trials_per_target - len(out) - 1  # keep one trial for the sampler
        kmax = min(spec.search.sources.max_k or len(units), len(units))
        src = spec.search.sources
        ranked = [(IMPORTANCE_TRIAL, spec.seeds[0], importance_trial_params(spec, units))
                  ] if src.importance_trial else []
        top = src.importance_top
        k_top = min(top.k(len(units)), kmax) if top is not None else 0
        if top is not None and not (k_top == len(units) and top.temperature == src.importance_trial):  # no twin
            ranked.append((importance_label(k_top), spec.seeds[0],
                           importance_trial_params(spec, units, k_top, top.temperature)))
        if src.importance_trial and src.importance_init:  # its pretraining fine-tuned at both ends of the lr range
            ranked += [(f"{IMPORTANCE_TRIAL}-lr-{end}", spec.seeds[0], importance_lr_params(spec, lr))
                       for end, lr in (("high", spec.search.lr.high), ("low", spec.search.lr.low))]
        ranked += [(f"top-{k}", spec.seeds[0], ranking_params(k, spec)) for k in range(1, min(3, kmax) + 1)
                   if k < len(units) or not c.uniform]
        out += ranked[:max(0, room)]
    return out


def _mark_run(results_dir: str, trial_id: str, state: str) -> None:
    """Driver-side: close a trial's MLflow run the trial could not close (pruned, errored, orphaned)."""
    tracker = tracker_for(load_resolved(results_dir))
    for r in tracker.find_runs({"rtl.kind": "trial", "rtl.trial_id": trial_id}):
        tracker.set_tags(r.info.run_id, {"rtl.state": state} | ({"rtl.orphaned": "1"} if state == "orphaned" else {}))
        if r.info.status == "RUNNING":
            tracker.finish(r.info.run_id, "FINISHED" if state in ("complete", "pruned") else "KILLED")


def _orphan_hook(results_dir: str):
    import functools

    return functools.partial(_mark_orphan, results_dir)


def _mark_orphan(results_dir: str, trial_id: str) -> None:
    _mark_run(results_dir, trial_id, "orphaned")


def _callbacks(results_dir: str, target: str) -> list[Any]:
    from ray import tune

    class Progress(tune.Callback):
        """A concise line per finished trial: running / done / pruned / errored / best val."""

        def __init__(self) -> None:
            self.last = 0.0

        def _line(self, trials: list[Any]) -> str:
            fin = [t for t in trials if t.status == "TERMINATED"]
            done = [t for t in fin if (t.last_result or {}).get("finished")]
            losses = [v for v in (objective_of(t.last_result) for t in done) if v is not None]
            best = objective.value(min(losses, default=None))
            return (f"[{target}] running {sum(t.status == 'RUNNING' for t in trials)} | done {len(done)} | "
                    f"pruned {len(fin) - len(done)} | errored {sum(t.status == 'ERROR' for t in trials)} | "
                    f"pending {sum(t.status == 'PENDING' for t in trials)} | best val {objective.label} "
                    + (f"{best:.4f}" if best is not None else "-"))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            done = bool((trial.last_result or {}).get("finished"))
            _mark_run(results_dir, trial.trial_id, "complete" if done else "pruned")
            print(self._line(trials), flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            _mark_run(results_dir, trial.trial_id, "errored")
            print(self._line(trials), flush=True)

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if time.time() - self.last > 30:
                self.last = time.time()
                print(self._line(trials), flush=True)

    from ray.tune.logger import JsonLoggerCallback

    from rtl.sweep.objective import Objective

    objective = Objective.of(load_resolved(results_dir))
    return [Progress(), JsonLoggerCallback()]  # result.json per trial (status/report read it)


def trial_dirname(trial: Any) -> str:
    t = trial.config["trial"]
    if t.get("kind") == "confirm":
        return f"confirm_{t['number']:04d}_seed{t['seed']}_{trial.trial_id}"
    return f"trial_{t['number']:04d}_{trial.trial_id}"


def _trainable(spec: SweepSpec) -> Any:
    from ray import tune

    r = spec.resources
    return tune.with_resources(run_trial, {"cpu": r.cpus, "gpu": r.gpus})


def _scheduler(spec: SweepSpec) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    from rtl.sweep.scheduler import ControlAwareASHA

    if spec.scheduler.name == "fifo":
        return FIFOScheduler()
    if spec.scheduler.name == "rungs":  # successive halving over pretraining rungs (rtl.sweep.subset)
        from rtl.sweep.subset import fidelities

        top = fidelities(spec)[-1]
        return ControlAwareASHA(time_attr="fidelity", metric=METRIC, mode="min", max_t=top + 1, grace_period=1,
                                reduction_factor=spec.scheduler.reduction_factor)
    # time_attr "epoch": the trainable's final report repeats the last epoch with finished=True
    # metric: the spec's objective in loss form (rtl.sweep.objective), per fine-tune epoch
    return ControlAwareASHA(time_attr="epoch", metric=METRIC, mode="min", max_t=spec.budget.finetune_epochs,
                         grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor)


def _errored(grid: Any) -> list[str]:
    """Paths of the trials of a finished Tuner.fit() that ended in error (their error.txt is there)."""
    return [str(r.path) for r in grid if r.error is not None]


def target_experiments(spec: SweepSpec, target: str) -> list[str]:
    """Tune experiments of a target's search, in order: the main one, then any top-ups (`<target>.topup<k>`)."""
    storage = join(spec.results_dir, RAY_RESULTS)
    out = [join(storage, target)]
    k = 1
    while os.path.isdir(join(storage, f"{target}.topup{k}")):
        out.append(join(storage, f"{target}.topup{k}"))
        k += 1
    return out


def _reconcile(spec: SweepSpec, target: str) -> None:
    """Before any experiment of `target` is created or restored: Optuna trials left RUNNING that no Tune
    experiment state of the target holds were lost with a killed driver -> FAIL + re-enqueued. A trial
    Tune is about to restore is in a state file, so it is never declared an orphan."""
    from rtl.sweep.search import open_study, reconcile_orphans, tune_trials

    known: dict[str, Any] = {}
    for exp in target_experiments(spec, target):
        if not os.path.isdir(exp) or not any(n.startswith("experiment_state-") and n.endswith(".json")
                                             for n in os.listdir(exp)):
            continue  # no state: Tune restarts it afresh and resumes none of its trials
        trials = tune_trials(exp)
        if trials is None:  # state unreadable: declaring orphans could drop live trials; skip, say so
            return
        known |= {t.trial_id: t for t in trials}
    study = open_study(spec.optuna_url(), study_name(spec, target))
    reconcile_orphans(study, set(known), _orphan_hook(spec.results_dir))
    # trials Tune checkpointed as ended whose outcome the killed driver never told Optuna: Tune will not
    # run them again, so tell them now from their last result (idempotent: told trials are skipped)
    teller = OptunaAskTell(storage_url=spec.optuna_url_template(), study_name=study_name(spec, target),
                           space=spec.search.model_dump(), units=units_of(spec))
    from optuna.trial import TrialState

    for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tt = known.get(ft.user_attrs.get("rtl.tune_trial_id"))
        if tt is not None and tt.status in ("TERMINATED", "ERROR"):
            teller.on_trial_complete(tt.trial_id, tt.last_result or None, error=tt.status == "ERROR")


def _base_config(spec: SweepSpec, target: str) -> dict[str, Any]:
    """The trainable's fixed config part (rtl.sweep.trial.run_trial reads it): Tune's param_space, also
    carried by every searcher suggestion and re-specified on restore."""
    return {"rtl": {"results_dir": spec.results_dir, "target": target}}


def _tuner(spec: SweepSpec, target: str, exp_path: str, num_samples: int, units: list[str]) -> Any:
    from ray import tune

    searcher = OptunaAskTell(
        storage_url=spec.optuna_url_template(), study_name=study_name(spec, target), space=spec.search.model_dump(),
        units=units, sampler=spec.searcher.name, seed=spec.seeds[0], n_startup_trials=spec.searcher.n_startup_trials,
        controls=controls_for(spec, units), base=_base_config(spec, target))
    tuner = tune.Tuner(
        _trainable(spec),
        param_space=dict(searcher.base),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=_scheduler(spec), num_samples=num_samples,
                                    max_concurrent_trials=spec.budget.max_concurrent,
                                    trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname,
                                    reuse_actors=True),  # torch/MLflow imports once per worker
        run_config=tune.RunConfig(
            name=os.path.basename(exp_path), storage_path=os.path.dirname(exp_path), verbose=0,
            callbacks=_callbacks(spec.results_dir, target), failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    keep_tuner_copy(exp_path)  # Tuner() wrote tuner.pkl: a later kill mid-sync cannot take it away
    return tuner


def _shortfall(spec: SweepSpec, target: str) -> int:
    from rtl.sweep.search import accounted_trials, open_study

    return spec.budget.trials_per_target - accounted_trials(open_study(spec.optuna_url(), study_name(spec, target)))


MAX_TOPUPS = 5


def _run_target(spec: SweepSpec, target: str, units: list[str]) -> list[str]:
    """Restore (or create) the target's main experiment, then top up: trials lost with a killed driver
    (re-enqueued orphans) that Tune's restored counter will not ask for again run in a small follow-up
    experiment, so the study always ends with exactly `trials_per_target` trials and no WAITING one."""
    from ray import tune

    lost = {p for p in target_experiments(spec, target) if repair_experiment_files(p)[1]}
    _reconcile(spec, target)
    errored: list[str] = []
    for k, exp_path in enumerate(target_experiments(spec, target) + [None] * MAX_TOPUPS):
        if exp_path in lost:  # tuner.pkl truncated by a kill and no copy of it: written anew (the same
            # trainable and configs; a top-up's sample count is today's shortfall)
            _tuner(spec, target, exp_path, spec.budget.trials_per_target if k == 0 else _shortfall(spec, target),
                   units)
        if exp_path is None:
            n = _shortfall(spec, target)
            if n <= 0:
                return errored
            exp_path = join(spec.results_dir, RAY_RESULTS, f"{target}.topup{k}")
            print(f"[{target}] {n} trial(s) of the budget were lost with a killed driver: running them", flush=True)
            tuner = _tuner(spec, target, exp_path, n, units)
        elif tune.Tuner.can_restore(exp_path):
            print(f"[{target}] resuming {exp_path}", flush=True)
            repair_lagging_checkpoints(exp_path)
            # tuner.pkl does not hold the param_space (Ray pops it): re-specify it. A restore Tune cannot
            # complete (killed before its first experiment-state save) logs "Restarting experiment." and
            # starts afresh with that param_space -- None if not given: trials without "rtl" (KeyError 'rtl')
            tuner = tune.Tuner.restore(exp_path, trainable=_trainable(spec), resume_unfinished=True,
                                       resume_errored=True, restart_errored=False,
                                       param_space=_base_config(spec, target))
        else:  # never started, or killed before Tune's first checkpoint (its trials were reconciled above)
            n = spec.budget.trials_per_target if k == 0 else _shortfall(spec, target)
            if n <= 0:
                continue
            tuner = _tuner(spec, target, exp_path, n, units)
        errored += _errored(tuner.fit())
    if _shortfall(spec, target) > 0:
        raise RtlError(f"[{target}] the study is still short of its budget after {MAX_TOPUPS} top-ups; "
                       f"see `rtl sweep status {spec.results_dir}`")
    return errored


def confirm_configs(spec: SweepSpec, target: str, units: list[str], best: Any) -> list[dict[str, Any]]:
    """Trainable configs re-running `best` (a searched Optuna trial) with every other seed of the spec."""
    from optuna.trial import FixedTrial

    label = best.user_attrs.get("rtl.enqueued", "")  # the importance trial is confirmed from scratch too
    params = define_space(FixedTrial(best.params), spec.search.model_dump(), units, None, label)
    used = int(best.user_attrs.get("rtl.seed", spec.seeds[0]))
    return [TrialParams(number=best.number, seed=s, kind="confirm", enqueued=label, **params).to_config()
            for s in dict.fromkeys(spec.seeds) if s != used]


def _confirm_callbacks(results_dir: str, target: str) -> list[Any]:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    def mark(trial: Any, state: str) -> None:
        tracker = tracker_for(load_resolved(results_dir))
        for r in tracker.find_runs({"rtl.kind": "confirm", "rtl.tune_trial_id": trial.trial_id}):
            tracker.set_tags(r.info.run_id, {"rtl.state": state})
            if r.info.status == "RUNNING":
                tracker.finish(r.info.run_id, "FINISHED" if state == "complete" else "KILLED")

    class ConfirmProgress(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            mark(trial, "complete" if (trial.last_result or {}).get("finished") else "stopped")
            print(f"[{target}] confirm seed {trial.config['trial']['seed']}: val "
                  f"{(trial.last_result or {}).get('val_error', float('nan')):.4f}", flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            mark(trial, "errored")

    return [ConfirmProgress(), JsonLoggerCallback()]


def _run_confirm(spec: SweepSpec, target: str, units: list[str]) -> list[str]:
    """Confirm trials of one target (after its search): a new experiment, or restore the existing one.

    The experiment is named after the best trial, so if the best changes (an errored searched trial
    completed on a later resume) the new best is confirmed too instead of restoring the old run."""
    from ray import tune

    if len(spec.seeds) < 2:
        return []
    best = best_searched(spec.results_dir, target)
    if best is None:
        print(f"[{target}] no searched trial completed: no confirm trials", flush=True)
        return []
    exp_path = confirm_experiment(spec, target, best.number)
    trainable = _trainable(spec)
    if repair_experiment_files(exp_path)[1]:  # tuner.pkl truncated before rtl copied it: start it again
        os.remove(join(exp_path, "tuner.pkl"))
    if tune.Tuner.can_restore(exp_path):
        repair_lagging_checkpoints(exp_path)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   restart_errored=False)
    else:
        configs = confirm_configs(spec, target, units, best)
        if not configs:
            return []
        print(f"[{target}] confirming best trial #{best.number} with seeds {[c['seed'] for c in configs]}",
              flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space=_base_config(spec, target) | {"trial": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.budget.max_concurrent,
                                        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=os.path.basename(exp_path), storage_path=os.path.dirname(exp_path), verbose=0,
                callbacks=_confirm_callbacks(spec.results_dir, target),
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
        keep_tuner_copy(exp_path)
    return _errored(tuner.fit())


def _rank_task(spec_json: str, target_path: str, units: list[str]) -> dict[str, Any]:
    """Ray task: the generalist (cache) and the target's ranking (rtl.select.rank, experts cached)."""
    import torch

    from rtl.select.rank import RankConfig, rank_target
    from rtl.sweep.spec import SweepSpec
    from rtl.sweep.subset import generalist

    spec = SweepSpec.model_validate_json(spec_json)
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    gen, _ = generalist(spec, units)
    rk = spec.search.sources.ranking
    cfg = RankConfig(target=target_path, corpus=spec.corpus_path(), generalist=str(gen),
                     by=spec.search.sources.by, units=units, expert_fraction=rk.expert_fraction, seeds=rk.seeds,
                     finetune_epochs=rk.finetune_epochs, finetune_lr=spec.control_lr(),
                     batch_size=spec.budget.batch_size, cache_dir=spec.cache_dir(), use_gpu=spec.resources.gpus > 0)
    return rank_target(cfg, log=lambda *_: None)


def _specialist_rank_task(spec_json: str, target_path: str, units: list[str]) -> dict[str, Any]:
    """Ray task: the target's ranking by its specialists (rtl.sweep.specialists.ranking; specialists cached)."""
    import torch

    from rtl.sweep import specialists
    from rtl.sweep.spec import SweepSpec

    spec = SweepSpec.model_validate_json(spec_json)
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    return specialists.ranking(spec, units, target_path)


def target_order(spec: SweepSpec, target: str, units: list[str]) -> list[str]:
    """The units in the order the ranked space searches them: the target's ranking, computed once per
    sweep (`<results>/rankings/<target>.json`, reused on resume) or read from `sources.ranking.file`."""
    if spec.search.sources.space != "ranked":
        return units
    from rtl.select.rank import format_ranking, read_ranking, write_ranking

    rk = spec.search.sources.ranking
    path = ranking_path(spec.results_dir, target)
    given = rk.file.replace("{target}", target) if rk.file else None
    if given:
        ranking = read_ranking(spec._rel(given))
    elif os.path.exists(path):
        ranking = read_ranking(path)
    else:
        import ray

        from rtl.sweep import specialists

        by_specialists = ranking_method(spec.search.sources) == "specialists"
        rank_fn, fmt = ((_specialist_rank_task, specialists.format_ranking) if by_specialists
                        else (_rank_task, format_ranking))
        print(f"[{target}] ranking {len(units)} sources "
              f"({'specialists' if by_specialists else 'generalist + experts'}, cached)", flush=True)
        r = spec.resources
        task = ray.remote(num_cpus=r.cpus, num_gpus=r.gpus, max_retries=1)(rank_fn)
        target_path = dict(zip(spec.target_names(), spec.target_paths()))[target]
        ranking = ray.get(task.remote(spec.model_dump_json(), target_path, units))
        write_ranking(path, ranking)
        table = ranking_path(spec.results_dir, target, "txt")
        with open(table, "w") as f:
            f.write(fmt(ranking) + "\n")
        tracker_for(spec).log_ranking(target, ranking, table)
    bad = sorted(set(ranking["order"]) ^ set(units))
    if bad:
        raise RtlError(f"{path if not given else given}: the ranking's sources differ from the sweep's "
                       f"({', '.join(bad[:3])}); delete it (or fix sources.ranking.file) to rank again")
    print(f"[{target}] ranking: {', '.join(ranking['order'][:5])}{' ...' if len(units) > 5 else ''}; "
          f"{ranking['verdict']}", flush=True)
    return list(ranking["order"])


def _init_ray(address: str | None) -> None:
    from rtl.raystart import ensure_ray  # join the cluster, or a local Ray on 127.0.0.1 only (issue 17)

    ensure_ray(address)


def run_sweep(spec: SweepSpec, *, address: str | None = None) -> str:
    """Run (or continue) every target of `spec`; returns the results dir."""
    from rtl.sweep.preflight import preflight, replaces_unstarted  # issue 12: checks first

    preflight(spec, address=address)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    corpus = spec.corpus_path()
    if not os.path.isfile(os.path.join(corpus, MANIFEST_FILE)):
        raise RtlError(f"{spec.spec_file}: corpus: no corpus at {corpus} (run `rtl corpus build` first)")
    for name, path in zip(spec.target_names(), spec.target_paths()):
        if not os.path.isfile(os.path.join(path, "dataset.yaml")):
            raise RtlError(f"{spec.spec_file}: targets: {name}: no dataset at {path}")
    if len(set(spec.target_names())) != len(spec.targets):
        raise RtlError(f"{spec.spec_file}: targets: two targets share a folder name")
    spec_json = spec_path(spec.results_dir)
    if not os.path.exists(spec_json) or replaces_unstarted(spec):  # a start that ran no trial takes a fix
        save_resolved(spec, spec_json)
    else:
        old = load_resolved(spec.results_dir).model_dump(exclude={"spec_file"})
        if old != spec.model_dump(exclude={"spec_file"}):
            diff = sorted(k for k in old if old[k] != spec.model_dump()[k])
            raise RtlError(f"{spec.results_dir}: a sweep named {spec.name!r} already ran with a different spec "
                           f"({', '.join(diff)} differ); rename the sweep or use `rtl sweep resume`")
    units = units_of(spec)
    tracker = tracker_for(spec)  # create experiment + parents in the driver: trials never race on them
    for target in spec.target_names():
        tracker.get_or_create_target_run(target)
    _init_ray(address)
    errored: list[str] = []
    for target in spec.target_names():
        order = target_order(spec, target, units)
        errored += _run_target(spec, target, order)
        errored += _run_confirm(spec, target, order)
        from rtl.sweep.deliver import deliver_target  # keep + register the best model (issue 11)

        deliver_target(spec, target)
    for target in spec.target_names():
        tracker.finish(tracker.get_or_create_target_run(target))
    print(f"results: {spec.results_dir}\nMLflow:  rtl ui --workspace {spec.results_dir}", flush=True)
    if errored:  # finished trials are kept; a job runner must not report success
        raise RtlRuntimeError(f"{len(errored)} trial(s) errored (see error.txt in {errored[0]}"  # exit 1
                              + (f" and {len(errored) - 1} more" if len(errored) > 1 else "")
                              + f"); finished trials are kept: `rtl sweep resume {spec.results_dir}` retries them")
    return spec.results_dir


def resume_sweep(results_dir: str, *, address: str | None = None) -> str:
    """Continue a sweep from its results dir (spec.json + Tune experiments + Optuna storage)."""
    return run_sweep(load_resolved(results_dir), address=address)
