"""Optuna ask/tell behind Ray Tune's `Searcher` interface: one RDB-backed study per target.

Why not `ray.tune.search.optuna.OptunaSearch`: (1) with ASHA it tells Optuna COMPLETE with the truncated
score of a stopped trial, which biases TPE (Falkner et al. 2018 discuss the same bias in BOHB); (2) its
study lives in driver memory and is pickled with the experiment, so a crash between checkpoints loses
history. Here every state change goes straight to the RDB storage (SQLite locally, PostgreSQL on a
cluster), and:

* a trial that ends without the trainable's final report (`finished: True`) — i.e. stopped by the
  scheduler — is told PRUNED (its per-epoch values were reported as intermediate values), errors FAIL;
* the Tune trial id is stored on the Optuna trial (`rtl.tune_trial_id`), so the searcher's map is
  rebuilt from storage, `tell` is idempotent (a trial already COMPLETE/PRUNED is never told twice) and a
  trial errored-then-resumed is added as a new finished trial instead of overwriting the FAIL;
* before any Tune experiment of a target is created or restored, the driver reconciles the study with
  every Tune experiment state of that target (`reconcile_orphans`): an Optuna trial left RUNNING whose
  Tune id no experiment holds was lost with a killed driver before Tune checkpointed it ("orphan"): it
  is marked FAIL (`rtl.orphaned`) and its parameters re-enqueued, so control trials are never lost. A
  trial Tune restores is in its experiment state and so is never an orphan; should a result still
  arrive for an orphan, it is kept as a finished trial and its re-enqueued twin is withdrawn. The
  runner then tops the study up to the budget (`accounted_trials`), so no WAITING trial is left behind.

What is minimised: `objective_loss`, the spec's objective in loss form (rtl.deliver.metrics: val error,
or 1 - macro F1, 1 - AUROC, ...; the study's direction stays "minimize", so a study created before
objectives existed resumes as it was). Results without it (trials of such a sweep) fall back to
`val_error`, which is the same number under the default objective. Each COMPLETE trial also keeps
`rtl.val_error` and its `rtl.test_*` values (test error, test objective metric) as user attrs.

The source subset is encoded so it can never be empty (no repair, no rejected samples): an `anchor`
categorical picks one unit that is always on, then one 0/1 categorical `src.<unit>` per other unit.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import time
from typing import Any

from ray.tune.search import Searcher

from rtl.artifacts.trial import TrialParams, is_importance_trial
from rtl.errors import ConfigError
from rtl.sweep.spec import expand_storage

log = logging.getLogger(__name__)

TUNE_ID = "rtl.tune_trial_id"
ORPHANED = "rtl.orphaned"  # FAIL: lost with a killed driver, params re-enqueued
SUPERSEDED = "rtl.superseded"  # FAIL: a re-enqueued twin withdrawn because its orphan finished after all
REENQUEUED_FROM = "rtl.reenqueued_from"
RESUMED_FROM = "rtl.resumed_from"
METRIC = "objective_loss"  # what the searcher and the schedulers minimise (the objective in loss form)


def objective_of(result: dict[str, Any] | None) -> float | None:
    """The value to minimise from a trial report: `objective_loss`, else (older sweeps) `val_error`."""
    if not result:
        return None
    v = result.get(METRIC, result.get("val_error"))
    return None if v is None else float(v)


def define_space(trial: Any, space: dict[str, Any], units: list[str], control: str | None,
                 enqueued: str = "") -> dict[str, Any]:
    """Define-by-run search space -> trial params for the trainable. `space` = SweepSpec.search dict.

    Returns the `TrialParams` fields the space decides (rtl.artifacts.trial): {"mask": [units on] | None,
    "temperature": float | None, "lr", "freeze_depth", "regularizer", "reg_strength", "init"} and, in the
    ranked space, "k", "drop", "add" (and "importance_init" when `pretrain: importance` was sampled).
    Controls use the same parameter names (values enqueued); `enqueued` is the trial's `rtl.enqueued` label."""
    out: dict[str, Any] = {"init": "corpus"}
    out["lr"] = trial.suggest_float("lr", space["lr"]["low"], space["lr"]["high"], log=True)
    if control == "scratch":
        out["freeze_depth"] = 0
    else:
        fd = space["freeze_depth"]
        out["freeze_depth"] = trial.suggest_int("freeze_depth", fd["low"], fd["high"])
    reg = space["regularizer"]
    out["regularizer"] = trial.suggest_categorical("regularizer", reg["choices"])
    out["reg_strength"] = (trial.suggest_float("reg_strength", reg["strength"]["low"], reg["strength"]["high"],
                                               log=True) if out["regularizer"] != "none" else 0.0)
    if control in ("scratch", "imagenet"):
        out.update(init=control, mask=None, temperature=None)
        return out
    if (space.get("sources") or {}).get("space") == "ranked":
        return _ranked(trial, space, units, out, labeled=bool(control or enqueued), label=enqueued)
    anchor = trial.suggest_categorical("anchor", units)
    mask = [u for u in units if u == anchor or trial.suggest_categorical(f"src.{u}", [0, 1]) == 1]
    out["mask"] = mask  # never empty: the anchor is always on
    temp = space["temperature"]
    on = "on" if not temp["allow_off"] else trial.suggest_categorical("importance", ["off", "on"])
    out["temperature"] = trial.suggest_float("temperature", temp["low"], temp["high"], log=True) if on == "on" else None
    return out


def ranked_mask(order: list[str], k: int, drop: int, add: int) -> list[str]:
    """The subset of the ranked space: the top-k of `order`, minus its `drop`-th (1-based; 0 none; only
    when k > 1), plus the `add`-th unit after the top-k (0 none). Several codes may name one subset: the
    trial cache is keyed by the subset, so they cost one pretraining."""
    mask = list(order[:k])
    if 0 < drop <= len(mask) and len(mask) > 1:
        mask.pop(drop - 1)
    if add > 0 and k + add - 1 < len(order) and k > 0:
        mask.append(order[k + add - 1])
    return mask


PRETRAIN = ("continue", "importance")  # the ranked space's `pretrain` categorical (search.sources.importance_init)


def _pretrain_choice(trial: Any, src: dict[str, Any], labeled: bool) -> str | None:
    """`pretrain` of a ranked trial: "importance" = fine-tune the importance trial's pretraining, "continue" =
    the subset's continuation of the generalist; None when the space has no such choice. Enqueued trials
    (controls, ranking trials) have it fixed; a trial that replays params stored before the choice existed
    (an old sweep's orphan re-enqueued, its best trial confirmed) has fixed params without it and is not
    given one: it continues the generalist as it did."""
    if not (src.get("importance_init") and src.get("importance_trial")):
        return None
    fixed = _fixed_params(trial)
    if (fixed or labeled) and "pretrain" not in fixed:
        return None
    return str(trial.suggest_categorical("pretrain", list(PRETRAIN)))


def _fixed_params(trial: Any) -> dict[str, Any]:
    """The values a trial was given before sampling: an enqueued optuna.Trial's fixed params, or a
    FixedTrial's (a confirm run replaying a finished trial's params)."""
    frozen = getattr(trial, "_cached_frozen_trial", None)
    if frozen is not None:
        return frozen.system_attrs.get("fixed_params") or {}
    return getattr(trial, "_params", None) or {}


def _ranked(trial: Any, space: dict[str, Any], order: list[str], out: dict[str, Any],
            labeled: bool = False, label: str = "") -> dict[str, Any]:
    """Ranked space: k (0 = the generalist alone) over the target's ranking `order`, one drop and one
    add swap (fixed categorical choices, so TPE's multivariate model sees one joint distribution).
    With `search.sources.importance_init`, first `pretrain`: "importance" fine-tunes the importance trial's
    pretraining (every source, weighted at `importance_trial`, from scratch; cached) with the sampled
    fine-tune settings, so the search spends trials on the strongest init without paying a pretraining
    (sampled, or enqueued at the ends of the lr range: `importance_lr_params`)."""
    src = space["sources"]
    if _pretrain_choice(trial, src, labeled) == "importance" and not is_importance_trial(label):
        out.update(k=len(order), drop=0, add=0, mask=list(order), temperature=float(src["importance_trial"]),
                   importance_init=True)
        return out
    kmax = min(src.get("max_k") or len(order), len(order))
    k = trial.suggest_int("k", 0, kmax)
    swaps = list(range(int(src.get("swaps", 2)) + 1))
    drop = trial.suggest_categorical("drop", swaps) if swaps[1:] else 0
    add = trial.suggest_categorical("add", swaps) if swaps[1:] else 0
    mask = ranked_mask(order, k, int(drop), int(add))
    out.update(k=int(k), drop=int(drop), add=int(add))
    if not mask:  # the generalist itself: no subset pretraining, no importance weights
        out.update(init="generalist", mask=[], temperature=None)
        return out
    out["mask"] = mask
    temp = space["temperature"]
    on = "on" if not temp["allow_off"] else trial.suggest_categorical("importance", ["off", "on"])
    out["temperature"] = trial.suggest_float("temperature", temp["low"], temp["high"], log=True) if on == "on" else None
    return out


def ranking_params(k: int, spec: Any) -> dict[str, Any]:
    """Fixed Optuna params of an enqueued ranking trial: the top-k with default fine-tune settings."""
    p: dict[str, Any] = {"lr": spec.control_lr(), "regularizer": "none", "freeze_depth": spec.controls.freeze_depth,
                         "k": k}
    if spec.search.sources.importance_init and spec.search.sources.importance_trial:
        p["pretrain"] = "continue"  # an importance trial sets "importance" below
    if spec.search.sources.swaps:
        p.update(drop=0, add=0)
    if spec.search.temperature.allow_off:
        p["importance"] = "off"
    return p


def importance_trial_params(spec: Any, units: list[str], k: int | None = None,
                            temperature: float | None = None) -> dict[str, Any]:
    """Fixed Optuna params of an enqueued importance trial: every source (k = all; or the ranking's top-k),
    importance on at `temperature` (default `search.sources.importance_trial`), default fine-tune
    settings. Its pretraining differs from a sampled trial with the same params (from scratch, not a
    continuation: `TrialParams.weighted_scratch`, decided by the trial's `rtl.enqueued` label), so TPE
    sees it as one more point of the (k, temperature) surface."""
    p = ranking_params(len(units) if k is None else int(k), spec)
    if "pretrain" in p:
        p["pretrain"] = "importance"
    if spec.search.temperature.allow_off:
        p["importance"] = "on"
    p["temperature"] = float(spec.search.sources.importance_trial if temperature is None else temperature)
    return p


def importance_lr_params(spec: Any, lr: float) -> dict[str, Any]:
    """Fixed Optuna params of an enqueued fine-tune of the importance trial's pretraining at `lr` (the ends of
    `search.lr`, with `search.sources.importance_init`): no pretraining of its own, so the lr -- the fine-tune
    setting that matters most -- is bracketed on the strongest init before the sampler takes over."""
    return {"lr": float(lr), "regularizer": "none", "freeze_depth": spec.controls.freeze_depth, "pretrain": "importance"}


def control_params(control: str, spec: Any, units: list[str]) -> dict[str, Any]:
    """Fixed Optuna params of a control trial (uniform = all sources, no weights; importance = all
    sources with importance weights at `controls.importance_temperature`, Ngiam et al. 2018)."""
    p: dict[str, Any] = {"lr": spec.control_lr(), "regularizer": "none"}
    if control != "scratch":
        p["freeze_depth"] = spec.controls.freeze_depth
    if spec.search.sources.space == "ranked" and control in ("generalist", "uniform", "importance"):
        p["k"] = 0 if control == "generalist" else len(units)  # the generalist alone / every source
        if spec.search.sources.importance_init and spec.search.sources.importance_trial:
            p["pretrain"] = "continue"
        if spec.search.sources.swaps:
            p.update(drop=0, add=0)
        if control == "generalist":
            return p
    elif control in ("uniform", "importance"):
        p["anchor"] = units[0]
        p.update({f"src.{u}": 1 for u in units[1:]})
    if control == "uniform":
        if not spec.search.temperature.allow_off:
            raise ConfigError(f"{spec.spec_file}: controls.uniform: needs search.temperature.allow_off: true")
        p["importance"] = "off"
    elif control == "importance":
        if spec.search.temperature.allow_off:
            p["importance"] = "on"
        p["temperature"] = spec.controls.importance_temperature
    return p


class OptunaAskTell(Searcher):
    """Tune searcher over one Optuna study; see module docstring. Picklable (study reopened lazily)."""

    def __init__(self, *, storage_url: str, study_name: str, space: dict[str, Any], units: list[str],
                 sampler: str = "tpe", seed: int = 0, n_startup_trials: int = 4,
                 controls: list[tuple[str, int, dict[str, Any]]] = (), base: dict[str, Any] | None = None) -> None:
        super().__init__(metric=METRIC, mode="min")
        # the trainable's fixed config part ({"rtl": {results_dir, target}}), returned with every suggestion as
        # well as set as Tune's param_space: Ray's tuner.pkl drops the param_space, so a trial created after
        # a restore once ran without it (KeyError 'rtl' in the kill test); the runner now re-specifies it on
        # restore, and the searcher (pickled whole) carries it too
        self.base = dict(base or {})
        # the URL as written (`${VAR}` unexpanded): Ray pickles the searcher into tuner.pkl in the results
        # dir, so an expanded database password must never be an attribute
        self.storage_url, self.study_name, self.space, self.units = storage_url, study_name, space, units
        self.sampler_name, self.seed, self.n_startup = sampler, seed, n_startup_trials
        self.controls = list(controls)  # (control name, seed, fixed params)
        self._study: Any = None
        self._live: dict[str, int] = {}  # Tune trial id -> Optuna trial number

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # metric/mode fixed (objective_loss, min); the space is define-by-run

    # ---- study --------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_study"} | {"_study": None}

    @property
    def study(self) -> Any:
        if self._study is None:
            self._study = open_study(expand_storage(self.storage_url, "storage.optuna"), self.study_name)
            n_done = len(self._study.get_trials(deepcopy=False))
            self._study.sampler = make_sampler(self.sampler_name, self.seed + n_done, self.n_startup)
            enqueue_controls(self._study, self.controls)
        return self._study

    def _number(self, trial_id: str) -> int | None:
        if trial_id in self._live:
            return self._live[trial_id]
        for t in self.study.get_trials(deepcopy=False):  # rebuilt from storage (after restore)
            if t.user_attrs.get(TUNE_ID) == trial_id and not t.user_attrs.get(RESUMED_FROM):
                self._live[trial_id] = t.number  # an orphan included: its result is re-attached, not dropped
                return t.number
        return None

    # ---- Tune Searcher API --------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        t = self.study.ask()
        control = t.user_attrs.get("rtl.control")
        seed = int(t.user_attrs.get("rtl.seed", self.seed))
        label = t.user_attrs.get("rtl.enqueued", "")
        params = TrialParams(number=t.number, control=control or "", seed=seed, enqueued=label,
                             **define_space(t, self.space, self.units, control, label))
        t.set_user_attr(TUNE_ID, trial_id)
        t.set_user_attr("rtl.mask", params.mask_label)
        self._live[trial_id] = t.number
        base = copy.deepcopy(getattr(self, "base", {}))  # searchers pickled before the field: none
        return base | {"trial": params.to_config()}  # a plain dict: Tune pickles configs

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        num = self._number(trial_id)
        value = objective_of(result)
        if num is None or result.get("finished") or value is None:
            return
        if "fidelity" in result and "rung" not in result:
            return  # rungs scheduler: fine-tune epochs are not intermediate values (the rungs are)
        ft = self.study.get_trials(deepcopy=False)[num]
        step = int(result["rung"]) if "rung" in result else int(result.get("epoch", result.get("training_iteration", 0)))
        if ft.state.name == "RUNNING" and step not in ft.intermediate_values:
            self.study._storage.set_trial_intermediate_value(ft._trial_id, step, value)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        import optuna
        from optuna.trial import TrialState

        num = self._number(trial_id)
        self._live.pop(trial_id, None)
        if num is None:
            log.warning("trial %s completed but has no Optuna trial", trial_id)
            return
        study = self.study
        ft = study.get_trials(deepcopy=False)[num]
        if ft.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return  # already told (e.g. finished before the driver died, re-reported on resume)
        value = objective_of(result)
        if error or value is None or not math.isfinite(value):
            state = TrialState.FAIL
        elif result.get("finished"):
            state = TrialState.COMPLETE
        else:
            state = TrialState.PRUNED
        attrs = {"rtl.epochs": int(result.get("epoch", 0))} if result else {}
        if result and "rung" in result and not result.get("finished"):
            attrs["rtl.rung"] = int(result["rung"])  # stopped after this pretraining rung
        if result and isinstance(result.get("effective_sources"), str) and result["effective_sources"]:
            attrs["rtl.effective_sources"] = result["effective_sources"]  # where a weighted pretraining drew from
        if result and isinstance(result.get("candidate_mask"), str) and result["candidate_mask"]:
            attrs["rtl.candidate_mask"] = result["candidate_mask"]  # the units the picked candidate pretrained on
        if result and isinstance(result.get("candidate"), str) and result["candidate"]:
            attrs["rtl.candidate"] = result["candidate"]  # which importance candidate was pretrained to the end
        if result and isinstance(result.get("specialists"), str) and result["specialists"]:
            attrs["rtl.specialists"] = result["specialists"]  # what the specialists said (rtl.sweep.specialists)
        if result and state == TrialState.COMPLETE:  # the report reads these (val error next to the objective)
            attrs |= {f"rtl.{k}": float(v) for k, v in result.items() if (k == "val_error" or k.startswith("test_"))
                      and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if ft.state == TrialState.FAIL:
            if state == TrialState.FAIL or any(t.user_attrs.get(RESUMED_FROM) == ft.number
                                               for t in study.get_trials(deepcopy=False)):
                return
            # errored (or declared an orphan) before, resumed and now finished: add the outcome as its own
            # finished trial; an orphan's re-enqueued twin that has not started is withdrawn
            keep = {k: v for k, v in ft.user_attrs.items() if k != ORPHANED}
            study.add_trial(optuna.trial.create_trial(
                params=ft.params, distributions=ft.distributions, state=state,
                value=value if state == TrialState.COMPLETE else None,
                intermediate_values={int(result.get("epoch", 0)): value} if state == TrialState.PRUNED else None,
                user_attrs={**keep, **attrs, RESUMED_FROM: ft.number}))
            if ft.user_attrs.get(ORPHANED):
                withdraw_twin(study, ft.number)
            return
        for k, v in attrs.items():
            study._storage.set_trial_user_attr(ft._trial_id, k, v)
        study.tell(num, value if state == TrialState.COMPLETE else None, state=state)

    # ---- save / restore (Tuner.restore) -------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump({"live": dict(self._live)}, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self._live = pickle.load(f)["live"]
        # no orphan check here: the runner reconciled the study with every Tune experiment of the target
        # before restoring (a trial Tune restores is in its state, so it is never an orphan)


def enqueue_controls(study: Any, controls: list[tuple[str, int, dict[str, Any]]]) -> None:
    """Enqueue the control trials once per study (first trials asked; a flag makes it idempotent)."""
    if not study.user_attrs.get("rtl.controls_enqueued"):
        for name, seed, params in controls:
            # "top-k" entries are searched trials enqueued from the ranking (not controls: prunable)
            attrs = {"rtl.enqueued": name} if name.startswith("top-") else {"rtl.control": name}
            study.enqueue_trial(params, user_attrs={**attrs, "rtl.seed": seed})
        study.set_user_attr("rtl.controls_enqueued", True)


def reconcile_orphans(study: Any, known_trial_ids: set[str], on_orphan: Any = None) -> list[int]:
    """Mark Optuna trials left RUNNING whose Tune id is in no Tune experiment state (`known_trial_ids`,
    the union over every experiment of the target) as orphans: FAIL + re-enqueue their params.
    Call in the driver before any experiment of the target is created or restored."""
    from optuna.trial import TrialState

    orphans = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tid = t.user_attrs.get(TUNE_ID)
        if tid in known_trial_ids:
            continue
        study._storage.set_trial_user_attr(t._trial_id, ORPHANED, True)
        study.tell(t.number, state=TrialState.FAIL)
        keep = {k: v for k, v in t.user_attrs.items() if k in ("rtl.control", "rtl.seed", "rtl.enqueued")}
        study.enqueue_trial(t.params, user_attrs={**keep, REENQUEUED_FROM: t.number})
        if tid and on_orphan is not None:
            on_orphan(tid)
        orphans.append(t.number)
    if orphans:
        log.warning("study %s: re-enqueued %d trial(s) lost with the driver: %s", study.study_name,
                    len(orphans), orphans)
    return orphans


def withdraw_twin(study: Any, orphan_number: int) -> None:
    """FAIL (`rtl.superseded`) the WAITING re-enqueued copy of an orphan whose own result arrived."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if t.user_attrs.get(REENQUEUED_FROM) == orphan_number:
            study._storage.set_trial_user_attr(t._trial_id, SUPERSEDED, True)
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            return


def counted(t: Any) -> bool:
    """False for bookkeeping trials (orphans, withdrawn twins): never results, never shown."""
    return not (t.user_attrs.get(ORPHANED) or t.user_attrs.get(SUPERSEDED))


def accounted_trials(study: Any) -> int:
    """Trials of the budget already spent: finished (COMPLETE/PRUNED), running, and errored ones not yet
    finished by a retry. Orphans, withdrawn twins and WAITING trials do not count."""
    trials = [t for t in study.get_trials(deepcopy=False) if counted(t)]
    retried = {t.user_attrs.get(RESUMED_FROM) for t in trials}
    # a retried trial's outcome is its own trial (RESUMED_FROM): count it, not the FAIL it replaces
    return sum(t.state.name in ("COMPLETE", "PRUNED", "RUNNING")
               or (t.state.name == "FAIL" and t.number not in retried) for t in trials)


def tune_trials(experiment_path: str | None) -> list[Any] | None:
    """Trials (id, status, last_result) in the newest Tune experiment state at `experiment_path`
    (None when unreadable)."""
    if not experiment_path:
        return None
    try:
        from ray.tune import ExperimentAnalysis

        return list(ExperimentAnalysis(experiment_path).trials)
    except Exception as e:  # no state yet / moved results dir: skip reconciliation, but say so
        log.warning("cannot read Tune state at %s (%s): orphan check skipped", experiment_path, e)
        return None


TUNER_PKL = "tuner.pkl"
TUNER_COPY = ".rtl-tuner.pkl"  # rtl's copy of a complete tuner.pkl (Ray writes it once, then only re-syncs it)


def _pickle_complete(path: str) -> bool:
    """A pickle file that was written to its end (protocol >= 2 ends with the STOP opcode). Not a load:
    Ray's tuner.pkl holds the trainable and the searcher, whose unpickling is not side-effect free."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"."
    except OSError:
        return False


def _state_complete(path: str) -> bool:
    """A snapshot file read to its end: JSON, or a pickle (Ray names some pickles `.json`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1)
            if head == b"\x80":
                return _pickle_complete(path)
            json.loads(head + f.read())
        return True
    except (OSError, ValueError):
        return False


def _copy_whole(src: str, dst: str) -> None:
    """Copy so that `dst` is never seen half-written (tmp + rename)."""
    import shutil

    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


def keep_tuner_copy(experiment_path: str) -> None:
    """Right after a fresh Tuner wrote `tuner.pkl`: keep a copy, so a later SIGKILL while Ray re-syncs the
    experiment dir (it rewrites every file of it) cannot leave the experiment unrestorable."""
    src, dst = os.path.join(experiment_path, TUNER_PKL), os.path.join(experiment_path, TUNER_COPY)
    if _pickle_complete(src) and not _pickle_complete(dst):
        _copy_whole(src, dst)


def repair_experiment_files(experiment_path: str) -> tuple[list[str], bool]:
    """Before an experiment is read or restored: undo what a SIGKILL during Ray's sync of the experiment
    dir truncated (seen: a 0-byte tuner.pkl, after which `Tuner.restore` raised EOFError on every resume).

    tuner.pkl truncated -> put rtl's copy back (`keep_tuner_copy`); an experiment state snapshot
    (experiment_state-<ts>.json, search_gen_state-<ts>.json, searcher-state-<ts>.pkl) with an unreadable
    file -> the whole snapshot renamed `*.truncated`, so Ray restores the previous one (what it lost is a
    few seconds of Tune's view; rtl's reconciliation re-enqueues trials Optuna still holds as running).
    -> (what was repaired, whether tuner.pkl is still unusable: then the caller writes it anew)."""
    fixed: list[str] = []
    if not os.path.isdir(experiment_path):
        return fixed, False
    pkl, copy = os.path.join(experiment_path, TUNER_PKL), os.path.join(experiment_path, TUNER_COPY)
    lost = False
    if os.path.exists(pkl) and not _pickle_complete(pkl):
        if _pickle_complete(copy):
            _copy_whole(copy, pkl)
            fixed.append(pkl)
        else:
            lost = True
    snapshots: dict[str, list[str]] = {}
    for name in os.listdir(experiment_path):
        m = re.fullmatch(r"(experiment_state|search_gen_state|searcher-state)-(.+)\.(json|pkl)", name)
        if m:
            snapshots.setdefault(m.group(2), []).append(name)
    for names in snapshots.values():
        paths = [os.path.join(experiment_path, n) for n in names]
        if all(_state_complete(p) for p in paths):
            continue
        for p in paths:
            os.replace(p, p + ".truncated")
            fixed.append(p)
    for p in fixed:
        log.warning("a killed driver left %s incomplete: repaired before resuming", p)
    return fixed, lost


def repair_lagging_checkpoints(experiment_path: str) -> list[str]:
    """Before `Tuner.restore`: make every checkpoint the newest experiment state names exist again.

    Tune keeps one checkpoint per trial (`num_to_keep=1`) and snapshots its experiment state every few
    seconds; a driver killed between a trial's new checkpoint (the old one deleted) and the next snapshot
    leaves a state naming a checkpoint that is gone, and `Tuner.restore` then errors that trial ("does not
    exist on storage anymore"; Ray has no fallback). The newest checkpoint the trial did persist is the
    same trial further on, and rtl's trainable resumes from its content (state.json: rung / epoch; MLflow
    and Optuna skip what was already logged), so it stands in: hard-linked (copied across devices) under
    the missing name. -> the paths filled in."""
    import shutil

    fixed: list[str] = []
    for trial in tune_trials(experiment_path) or []:
        ckpt = getattr(trial, "checkpoint", None)
        path = getattr(ckpt, "path", None)
        if not path or os.path.exists(path):
            continue
        parent = os.path.dirname(path)
        newer = sorted(d for d in (os.listdir(parent) if os.path.isdir(parent) else [])
                       if d.startswith("checkpoint_") and os.path.isdir(os.path.join(parent, d)))
        if not newer:
            continue
        src = os.path.join(parent, newer[-1])
        shutil.copytree(src, path, copy_function=_link_or_copy)
        log.warning("Tune state named a deleted checkpoint %s: using the newer %s", path, src)
        fixed.append(path)
    return fixed


def _link_or_copy(a: str, b: str) -> None:
    import shutil

    try:
        os.link(a, b)
    except OSError:  # another device
        shutil.copy2(a, b)


def make_sampler(name: str, seed: int, n_startup: int) -> Any:
    import warnings

    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate/group are "experimental" in Optuna
        # constant_liar: concurrent trials see running ones as bad, so parallel asks diverge
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True,
                                          group=True, constant_liar=True)


def open_study(storage_url: str, study_name: str) -> Any:
    """Create or load the study in RDB storage (SQLite: a busy timeout so few writers wait, not fail)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kw: dict[str, Any] = {"connect_args": {"timeout": 30}} if storage_url.startswith("sqlite") else {}
    for attempt in range(6):
        try:
            storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=kw)
            return optuna.create_study(storage=storage, study_name=study_name, direction="minimize",
                                       load_if_exists=True)
        except Exception as e:  # noqa: BLE001
            # Two processes creating a new storage at once (a sweep starting while `rtl sweep status`
            # reads it) race on Optuna's schema set-up: the loser sees an IntegrityError on
            # alembic_version or a locked database. The schema exists by then, so trying again works.
            text = str(e).lower()
            if attempt == 5 or not any(s in text for s in ("alembic_version", "locked", "unique constraint",
                                                           "already exists")):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")
