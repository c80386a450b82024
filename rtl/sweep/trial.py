"""The Tune trainable: one trial = (source mask, temperature, fine-tune settings) -> target val error.

Steps (all idempotent, so a trial re-executed after a crash or `rtl sweep resume` does no repeated work):
1. re-attach the trial's MLflow run by its Tune trial id (tracking.py), log params;
2. if the trial's Tune checkpoint holds `final.json` (it finished but the driver died before recording
   it), re-report that result and return — a finished trial is never re-run;
3. pretraining from the shared `PretrainCache`: the generalist on the masked corpus; with importance on,
   weights w(y) = P_t(y)/P_s(y) from the generalist on the target's train split (Ngiam et al. 2018,
   arXiv 1811.07056), then the specialist pretrained class-weighted on the same subset. Pretraining runs
   in-process (`pretrain_local`) for 1 worker, or as a Ray Train `TorchTrainer` (`run_pretrain`) for
   `train_workers > 1`; its Ray state lives under `<cache>/runs`, so a killed build resumes by epoch;
4. fine-tune; every epoch `tune.report({"val_error", "objective_loss", "epoch", ...}, checkpoint=...)` so
   ASHA can stop it (`objective_loss`: the spec's objective as a loss, rtl.sweep.objective); the last
   report carries `finished: True` and the test values (the searcher tells PRUNED otherwise).

The trial's config is parsed once into `TrialParams` and its pretraining decided once as a
`PretrainPlan` (rtl.artifacts.trial); Tune and Optuna see plain dicts.

Exact resume: each per-epoch checkpoint holds `state.json` (epoch) and `fit_state.pt` — the fine-tune's
resumable state (model, optimizer, scheduler, history, best weights, every RNG; `rtl.train.engine.fit`),
written with `torch.save` and read with `weights_only=True`. A trial restarted by `rtl sweep resume` or
after a lost node continues with the next epoch (the pretrained init is still resolved through the
cache, a hit); an epoch already reported is never run or reported again. A checkpoint without
`fit_state.pt` (older sweeps, unreadable file) falls back to a seeded replay from the init.

Confirm trials (`trial["kind"] == "confirm"`, launched by the runner after a target's search) re-run the
best searched configuration with another seed: same code path, but their MLflow run is tagged
`rtl.kind=confirm` and keyed by (best trial, seed) rather than by Tune trial id, so a confirm trial
re-created after a driver crash re-attaches to its run — and, when that run already holds its final
result (`rtl.final` tag), re-reports it instead of fine-tuning again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from rtl.artifacts.cache import PretrainCache, cache_key
from rtl.artifacts.checkpoint import read_checkpoint_meta
from rtl.artifacts.tracking import Tracker, default_tracking_uri, mask_params
from rtl.artifacts.tracking import retry as _retry
from rtl.artifacts.trial import PretrainPlan, TrialParams, is_importance_trial
from rtl.errors import RtlError
from rtl.sweep.spec import SweepSpec, load_resolved

log = logging.getLogger(__name__)


def tracker_for(spec: SweepSpec) -> Tracker:
    uri = default_tracking_uri(spec.results_dir, spec.tracking_uri())
    art = None if uri.startswith(("http", "databricks")) else os.path.join(spec.results_dir, "mlartifacts")
    return Tracker(uri, spec.name, art)


def units_of(spec: SweepSpec) -> list[str]:
    """Searchable units (datasets or domain tags) from the corpus manifest, filtered by `include`."""
    from rtl.train.strategies import open_view

    m = open_view(spec.corpus_path()).manifest
    if spec.search.sources.by == "datasets":
        have = sorted(m["datasets"])
    else:
        have = sorted({d for v in m["datasets"].values() for d in v.get("domain", [])})
    inc = spec.search.sources.include
    if inc:
        from rtl.errors import ConfigError

        bad = [u for u in inc if u not in have]
        if bad:
            raise ConfigError(f"{spec.spec_file}: search.sources.include: {bad[0]!r} not in corpus; "
                              f"valid: {', '.join(have)}")
        return list(inc)
    return have


def _view_args(spec: SweepSpec, mask: list[str]) -> dict[str, list[str] | None]:
    by = spec.search.sources.by
    return {"datasets": sorted(mask), "domains": None} if by == "datasets" else {"datasets": None,
                                                                                "domains": sorted(mask)}


def _pretrain(spec: SweepSpec, out: Path, storage: Path, seed: int, strategy: str, mask: list[str],
              class_weights: str | None = None, stop_after_epoch: int | None = None, split: int = 1,
              length: float = 1.0, init: str | None = None) -> None:
    """`split` > 1: each epoch of the schedule runs as `split` shorter ones (same images, same per-step
    learning-rate schedule, warm-up scaled), so a candidate's cut can fall inside one (rtl.sweep.candidates).
    `length` < 1: every epoch has that share of its images (the same epochs, each shorter). `init`: start
    from this checkpoint (its trunk; the schedule is the same fresh one) instead of from scratch."""
    from rtl.train.pretrain import PretrainConfig, pretrain_local, run_pretrain

    r = spec.resources
    n = samples_per_epoch(spec)
    extra: dict[str, Any] = {}
    if (split > 1 or length < 1) and n is None:  # "epochs" budget: an epoch is the subset's own size
        from rtl.train.strategies import open_view

        n = len(open_view(spec.corpus_path(), **_view_args(spec, mask)))
    if length < 1:
        n = max(spec.budget.batch_size, int(round(n * length)))
    if split > 1:
        n = -(-n // split)
        extra["warmup_epochs"] = PretrainConfig.model_fields["warmup_epochs"].default * split
    cfg = PretrainConfig(corpus=spec.corpus_path(), strategy=strategy, model=spec.backbone, out=str(out),
                         epochs=spec.budget.pretrain_epochs * split, samples_per_epoch=n, **extra,
                         batch_size=spec.budget.batch_size * r.train_workers,
                         workers=r.train_workers, cpus_per_worker=max(1, int(r.cpus)), use_gpu=r.gpus > 0,
                         class_weights=class_weights, storage_path=str(storage), seed=seed,
                         stop_after_epoch=stop_after_epoch, init_checkpoint=init,
                         min_side=spec.image.min_side, max_side=spec.image.max_side, **_view_args(spec, mask))
    (run_pretrain if r.train_workers > 1 else pretrain_local)(cfg)


def samples_per_epoch(spec: SweepSpec) -> int | None:
    """Examples per pretraining epoch: the size of the whole searchable corpus under the "steps" budget
    (every mask gets the same number of steps), None (= the subset's own size) under "epochs"."""
    if spec.budget.pretrain_budget == "epochs":
        return None
    from rtl.train.strategies import open_view

    return len(open_view(spec.corpus_path(), **_view_args(spec, units_of(spec))))


def _schedule(spec: SweepSpec, split: int = 1, length: float = 1.0) -> dict[str, Any]:
    """The pretraining schedule's part of a cache key; `split` only when > 1 and `length` only when < 1 (keys of
    unsplit full-length runs unchanged)."""
    return ({"epochs": spec.budget.pretrain_epochs, "batch_size": spec.budget.batch_size,
             "sides": [spec.image.min_side, spec.image.max_side], "budget": spec.budget.pretrain_budget,
             "samples_per_epoch": samples_per_epoch(spec)} | ({"split": split} if split > 1 else {})
            | ({"length": float(length)} if length < 1 else {}))


def pretrain_plan(spec: SweepSpec, t: TrialParams | dict[str, Any]) -> PretrainPlan:
    """What trial `t` pretrains, decided once from its params and the spec (rtl.artifacts.trial).

    A dict (`init`, `mask`, `seed`, `temperature`: the study runner's and the benchmarks' form) is read
    as the same fields; any `init` other than scratch / imagenet / generalist means "pretrain the mask"."""
    if isinstance(t, dict):
        init = t.get("init") if t.get("init") in ("scratch", "imagenet", "generalist") else "corpus"
        mask, seed, temp = t.get("mask"), int(t.get("seed", 0)), t.get("temperature")
        scratch = is_importance_trial(t.get("enqueued")) or bool(t.get("importance_init"))
    else:
        init, mask, seed, temp, scratch = t.init, t.mask, t.seed, t.temperature, t.weighted_scratch
    fixed = init in ("scratch", "imagenet", "generalist")
    space = spec.search.sources.space
    # the ranked space continues the generalist, except its importance trial (from scratch, full budget)
    cont = space == "ranked" and not (scratch and temp is not None and not fixed)
    return PretrainPlan(
        init=init, space=space, by=spec.search.sources.by, mask=list(mask or []),
        strategy="none" if fixed else ("subset" if temp is None else "weighted"),
        temperature=None if fixed or temp is None else float(temp), seed=seed, continue_generalist=cont,
        epochs=1 if cont else spec.budget.pretrain_epochs,
        samples_per_epoch=None if cont or fixed else samples_per_epoch(spec),
        subset_fraction=spec.budget.subset_fraction if cont else None, rungs=list(spec.budget.rungs) if cont else [])


def prepare_init(spec: SweepSpec, plan: PretrainPlan | dict[str, Any], target: str, tracker: Tracker | None,
                 weights_from: tuple[Path, str] | None = None) -> tuple[str, dict[str, str]]:
    """Bit space: the mask pretrained from scratch (cached). -> (finetune init: checkpoint dir |
    "scratch" | "imagenet", tags linking the pretraining). A dict is read by `pretrain_plan`.
    `weights_from` = (checkpoint, cache key): the model whose predictions give the importance weights
    (the ranked space's one generalist, whatever the trial's seed) instead of the mask's own model."""
    if isinstance(plan, dict):
        plan = pretrain_plan(spec, plan)
    if plan.init in ("scratch", "imagenet"):
        return plan.init, {}
    from rtl.train.strategies import open_view

    cache = PretrainCache(spec.cache_dir())
    runs = Path(spec.cache_dir()) / "runs"
    mask, seed, version = list(plan.mask), plan.seed, open_view(spec.corpus_path()).version
    base = dict(corpus_version=version, mask=mask, backbone=spec.backbone, schedule=_schedule(spec), seed=seed)
    if weights_from is not None and plan.strategy == "weighted":
        gen_ckpt, key = weights_from
    else:
        key = cache_key(temperature=None, **base)
        gen_ckpt = cache.get_or_create(key, lambda d: _pretrain(spec, d / "ckpt", runs, seed, "subset", mask)) / "ckpt"
    tags = {"rtl.cache_key": key}
    if plan.strategy != "weighted" or plan.temperature is None:
        return _linked(str(gen_ckpt), key, mask, None, tracker, tags)
    weights = _importance(spec, gen_ckpt, target, mask, plan.temperature)
    digest = hashlib.sha256(weights).hexdigest()[:16]
    key = cache_key(temperature=plan.temperature, weights_digest=digest, **base)

    def build(d: Path) -> None:
        (d / "weights.json").write_bytes(weights)
        _pretrain(spec, d / "ckpt", runs, seed, "weighted", mask, class_weights=str(d / "weights.json"))

    spec_dir = cache.get_or_create(key, build)
    tags.update({"rtl.cache_key": key, "rtl.generalist_cache_key": tags["rtl.cache_key"],
                 "rtl.weights_path": str(spec_dir / "weights.json")})
    return _linked(str(spec_dir / "ckpt"), key, mask, plan.temperature, tracker, tags)


def ranked_init(spec: SweepSpec, plan: PretrainPlan, target: str, tracker: Tracker, run_id: str,
                state: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Ranked space: the init is the generalist continued on the trial's subset through every rung
    (rtl.sweep.subset); with the `rungs` scheduler each rung's probe error is reported (time attribute
    `fidelity`) so successive halving can stop the trial before the next rung or the fine-tune is paid.
    -> (init, tags, extra fields for the later reports / state / final result).

    The rung score is the probe's val *error* whatever the spec's `objective`: successive halving only
    compares trials at the same rung, the probe is a cheap proxy for any of the objectives, and an
    ok-class metric on a logistic probe's few val images is mostly noise. It is reported as both
    `val_error` and the schedulers' `objective_loss`; the fine-tune's reports then carry the objective."""
    from rtl.sweep.subset import fidelities, generalist, probe_error, rung_checkpoints

    gen, gkey = generalist(spec, units_of(spec))
    fids, seed, report = fidelities(spec), plan.seed, spec.scheduler.name == "rungs"
    done = int(state.get("rung", 0))  # rungs reported before a restart: never reported again
    logged = {m.step for m in _retry(tracker.client.get_metric_history)(run_id, "rung_probe_error")}
    tags: dict[str, str] = {"rtl.generalist_cache_key": gkey}
    fixed = plan.fixed or not plan.continue_generalist
    init, key, weights, score = (str(gen) if plan.init == "generalist" else plan.init), gkey, None, None
    if not plan.continue_generalist and not plan.fixed:
        # an importance trial: its mask (every source, or the ranking's top-k) importance-weighted by the
        # generalist (the cache key of a bit-space mask), pretrained from scratch for the full budget, then scored like a
        # fixed init at every rung (it anchors the rung cut-offs; it is paid before its first report)
        if spec.search.sources.importance_candidates is not None:  # the best of several, picked at a cut
            init, key, tags["rtl.weights_path"] = _best_candidate(spec, plan, target, gen, tracker, run_id, tags)
        else:
            init, scratch_tags = prepare_init(spec, plan, target, None, weights_from=(gen, gkey))
            key, tags["rtl.weights_path"] = scratch_tags["rtl.cache_key"], scratch_tags["rtl.weights_path"]
    elif plan.strategy == "weighted" and plan.temperature is not None:
        weights = _importance(spec, gen, target, list(plan.mask), plan.temperature)
    rungs = None if fixed else rung_checkpoints(spec, gen, list(plan.mask), seed, weights)
    for r in range(len(fids)):
        if rungs is not None:
            ckpt, key = next(rungs)
            init = str(ckpt)
        if r + 1 <= done or not report:
            continue
        if score is None or not fixed:  # a fixed init scores the same at every rung: once
            score = probe_error(init, spec, target, seed)
        if r + 1 not in logged:
            tracker.log_metrics(run_id, {"rung_probe_error": score}, step=r + 1)
        _report({"val_error": score, "objective_loss": score, "fidelity": fids[r], "rung": r + 1, "epoch": 0,
                 "finished": False}, {"rung": r + 1})
    if weights is not None and (Path(init).parent / "weights.json").exists():
        tags["rtl.weights_path"] = str(Path(init).parent / "weights.json")
    extra: dict[str, Any] = {}
    if report:
        extra = {"result": {"fidelity": fids[-1]}, "state": {"rung": len(fids)},
                 "final": {"fidelity": fids[-1] + 1}}
    if plan.init in ("scratch", "imagenet"):
        return init, tags, extra
    tags["rtl.cache_key"] = key
    init, tags = _linked(init, key, list(plan.mask), plan.temperature, tracker, tags)
    return init, tags, extra


def _best_candidate(spec: SweepSpec, plan: PretrainPlan, target: str, gen: Path, tracker: Tracker, run_id: str,
                    tags: dict[str, str]) -> tuple[str, str, str]:
    """rtl.sweep.candidates.best_candidate for the importance trial; the candidates' probe errors are the
    run's `candidate_probe_error` (step = index, logged once) and `rtl.candidates` tag. -> (init, key, weights)."""
    from rtl.sweep.candidates import best_candidate, cut_epoch, epochs_of

    entry, key, best, cands = best_candidate(spec, plan, target, gen)
    logged = {m.step for m in _retry(tracker.client.get_metric_history)(run_id, "candidate_probe_error")}
    for i, c in enumerate(cands):
        if i not in logged and c.probe_error is not None:
            tracker.log_metrics(run_id, {"candidate_probe_error": c.probe_error}, step=i)
    tags["rtl.candidates"] = json.dumps([c.as_dict() for c in cands])
    said = specialists_said(entry)
    if said:
        tags["rtl.specialists"] = said
    b = cands[best]
    if len(cands) == 1:  # nothing compared (`own: false`, one variant): say what chose its sources
        who = "the specialists' pick" if said else "its one candidate"
        start = json.loads(said).get("continued") if said else None
        tags["rtl.candidate"] = (f"{ONE_CANDIDATE}{who}, {b.sources} source(s) at T={b.temperature:g}, seed {b.seed}"
                                 + (f", continuing {start}'s specialist" if start else ""))
    else:
        tags["rtl.candidate"] = (f"{b.sources} source(s) at T={b.temperature:g}, seed {b.seed} (candidate "
                                 f"{best + 1} of {len(cands)}, picked after epoch {cut_epoch(spec)} of "
                                 f"{epochs_of(spec)})")
    return str(entry / "ckpt"), key, str(entry / "weights.json")


ONE_CANDIDATE = "on "  # `rtl.candidate` of an importance trial that compared nothing starts with it


def candidates_compared(candidate: str) -> bool:
    """Whether an `rtl.candidate` tag names the best of several candidates (else: the only one)."""
    return not candidate.startswith(ONE_CANDIDATE)


def specialists_said(entry: Path) -> str:
    """The `rtl.specialists` tag of an importance trial whose candidates asked the specialists: JSON
    {"chosen": [...], "probe_loss": {unit: loss}} (the 20 best-probed units, 3 decimals), "continued": the
    unit whose specialist the pretraining started from (`from_specialist`), and "added" {unit: agreement} /
    "dropped" {unit: why} / "anchor": the units the label agreement added to the probe's cut
    (`specialist_agreement`) and removed from it (`specialist_prune`); "" otherwise."""
    from rtl.sweep.specialists import SCORES_FILE

    try:
        d = json.loads((Path(entry) / SCORES_FILE).read_text())
        best = sorted(d["probe_loss"].items(), key=lambda kv: kv[1])[:20]
        agree = d.get("agreement") or {}
        added = {str(u): round(float(agree["agreement"][u]), 3) for u in agree.get("added", [])}
        dropped = {str(u): str(why) for u, why in (agree.get("dropped") or {}).items()}
        return json.dumps({"chosen": list(d["chosen"]), "probe_loss": {u: round(float(v), 3) for u, v in best}}
                          | ({"continued": str(d["continued"])} if d.get("continued") else {})
                          | ({"added": added} if added else {}) | ({"dropped": dropped} if dropped else {})
                          | ({"anchor": str(agree["anchor"])} if added or dropped else {}))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""


EFFECTIVE_MASS = 0.9  # "effective sources": the fewest sources drawing this share of a weighted pretraining


def effective_sources(weights_path: str | None, by: str = "datasets") -> str:
    """"a,b": the fewest sources (datasets, or domain tags) that a weighted pretraining draws
    `EFFECTIVE_MASS` of its images from (rtl.select.ranking.suggest_mask on the weights' mass); "" without
    weights. A trial over every source with importance weights says which of them it actually used."""
    if not weights_path or not os.path.exists(weights_path):
        return ""
    from rtl.artifacts.weights import read_weights
    from rtl.select.ranking import suggest_mask

    try:
        w = read_weights(weights_path)
        mass = w.datasets if by == "datasets" else w.domains
        return ",".join(suggest_mask(mass, mass_threshold=EFFECTIVE_MASS)) if mass else ""
    except RtlError as e:  # an explanation only: never fails the trial
        log.warning("effective sources: %s", e)
        return ""


def _linked(ckpt: str, key: str, mask: list[str], temp: float | None, tracker: Tracker | None,
            tags: dict[str, str]) -> tuple[str, dict[str, str]]:
    if tracker is not None:  # one pretraining run per cache key, linked from every trial that uses it
        try:
            history = read_checkpoint_meta(ckpt).history
        except RtlError:
            history = []
        tags["rtl.pretrain_run_id"] = tracker.get_or_create_pretrain_run(
            key, {"mask": ",".join(sorted(mask)), "temperature": temp, "checkpoint": ckpt}, history)
    return ckpt, tags


def _importance(spec: SweepSpec, generalist: Path, target: str, mask: list[str], temperature: float) -> bytes:
    """The weights.json document (bytes) for the masked view: w(y) = P_t(y) / P_s(y) at `temperature`
    (Ngiam et al. 2018). Bytes, not a file: the callers put them into a cache entry (each call used to leave
    an rtl-weights-* folder in /tmp: thousands after a benchmark)."""
    import numpy as np

    from rtl.select.importance import class_mass, importance_weights, write_weights
    from rtl.select.inference import infer_checkpoint
    from rtl.train.strategies import open_view

    view = open_view(spec.corpus_path(), **_view_args(spec, mask))
    inf, _meta, _ = infer_checkpoint(generalist, target, split="train", num_threads=1)
    prior = np.zeros(view.num_classes)  # (K,) counts of the masked view, 0 outside it
    for k, n in view.class_counts().items():
        prior[int(k)] = n
    w = importance_weights(inf.logits, prior, temperature)  # (K,)
    with tempfile.TemporaryDirectory(prefix="rtl-weights-") as d:  # write_weights: the one writer of the format
        return write_weights(Path(d) / "weights.json", corpus_version=view.version, temperature=temperature,
                             class_table=view.manifest["classes"], weights=w, mass=class_mass(w, prior)).read_bytes()


FIT_STATE = "fit_state.pt"


def _read_state(ckpt: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state.json, fine-tune resume state or None) from the trial's last Tune checkpoint."""
    if ckpt is None:
        return {}, None
    with ckpt.as_directory() as d:
        p = Path(d) / "state.json"
        state = json.loads(p.read_text()) if p.exists() else {}
        fit_state = None
        f = Path(d) / FIT_STATE
        if f.exists() and "final" not in state:
            import torch

            try:
                fit_state = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # unreadable: replay from the init instead of failing the trial
                log.warning("cannot read %s (%s): fine-tuning restarts from its init", f, e)
    if fit_state is not None and int(fit_state.get("epoch", -2)) + 1 != int(state.get("epoch", -1)):
        log.warning("fine-tune state (epoch %s) does not match checkpoint epoch %s: ignored",
                    fit_state.get("epoch"), state.get("epoch"))
        fit_state = None
    return state, fit_state


def _report(metrics: dict[str, Any], state: dict[str, Any], fit_state: dict[str, Any] | None = None) -> None:
    from ray import tune

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "state.json").write_text(json.dumps(state))
        if fit_state is not None:
            import torch

            torch.save(fit_state, Path(d) / FIT_STATE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def confirm_key(number: int, seed: int) -> str:
    """MLflow identity of a confirm trial: (best searched Optuna trial, seed), stable across restarts."""
    return f"confirm-{number}-seed{seed}"


def _trial_run(tracker: Tracker, trial_id: str, target: str, t: TrialParams) -> tuple[str, dict | None]:
    """-> (MLflow run id, final result already recorded on a confirm run, else None)."""
    if t.kind != "confirm":
        run_id = tracker.get_or_create_trial_run(
            trial_id, target=target, name=f"{target}#{t.number}" + (f"-{t.control}" if t.control else ""),
            tags={"rtl.optuna_number": t.number, "rtl.control": t.control or "search"})
        # finished before the driver died but after Tune's last checkpoint of it: the run holds the result
        prior = _retry(tracker.client.get_run)(run_id).data.tags.get("rtl.final")
        return run_id, json.loads(prior) if prior else None
    key = confirm_key(t.number, t.seed)
    parent = tracker.get_or_create_target_run(target)
    run_id = tracker.get_or_create(  # Tracker has no confirm-run helper; same find-or-create by tags
        {"rtl.kind": "confirm", "rtl.trial_id": key, "rtl.target": target},
        {"mlflow.parentRunId": parent, "rtl.optuna_number": str(t.number), "rtl.control": "search",
         "rtl.seed": str(t.seed)}, f"{target}#{t.number}-confirm-seed{t.seed}")
    tracker.set_tags(run_id, {"rtl.tune_trial_id": trial_id})
    prior = _retry(tracker.client.get_run)(run_id).data.tags.get("rtl.final")
    if prior is None:
        _retry(tracker.client.update_run)(run_id, status="RUNNING")
    return run_id, json.loads(prior) if prior else None


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable. config = {"rtl": {"results_dir", "target"}, "trial": searcher output}
    (or a confirm trial's fixed configuration, `trial["kind"] == "confirm"`)."""
    import ray
    import torch
    from ray import tune

    from rtl.train.finetune import FinetuneConfig, run_finetune

    spec = load_resolved(config["rtl"]["results_dir"])
    # parsed once here (a config of any rtl version: resumed sweeps); typed from here on
    t = TrialParams.parse(config["trial"], f"{config['rtl']['results_dir']}: trial config")
    target_name = config["rtl"]["target"]
    target = dict(zip(spec.target_names(), spec.target_paths()))[target_name]
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    trial_id = tune.get_context().get_trial_id()
    state, fit_state = _read_state(tune.get_checkpoint())
    tracker = tracker_for(spec)
    run_id, prior = _trial_run(tracker, trial_id, target_name, t)
    # where the trial (last) ran: set, not create-time, so a retried trial records the node it finished on
    if ray.is_initialized():
        tracker.set_tags(run_id, {"rtl.node_id": ray.get_runtime_context().get_node_id(),
                                  "rtl.node_ip": ray.util.get_node_ip_address()})
    tracker.log_params(run_id, {**mask_params(t.mask, units_of(spec) if t.mask is not None else []),
                                "temperature": t.temperature if t.temperature is not None else "off",
                                "lr": t.lr, "freeze_depth": t.freeze_depth, "regularizer": t.regularizer,
                                "reg_strength": t.reg_strength, "init": t.init, "seed": t.seed,
                                "control": t.control or "search", "backbone": spec.backbone}
                       | ({"confirm_of": t.number} if t.kind == "confirm" else {}))
    from rtl.artifacts.tracking import source_params  # src.<name> = 0/1 per source (issue 11)

    tracker.log_params(run_id, source_params(t.mask, units_of(spec)))
    if "final" not in state and prior is not None:  # confirm trial re-created after its result was logged
        state = {"epoch": prior["epoch"], "final": prior}
    if "final" in state:  # finished before the driver died: never re-run
        state["final"].setdefault("objective_loss", state["final"]["val_error"])  # recorded before objectives
        _log_final(tracker, run_id, state["final"])
        tracker.finish(run_id)
        _report(state["final"], state)
        return
    plan = pretrain_plan(spec, t)
    if plan.space == "ranked":
        init, tags, rung = ranked_init(spec, plan, target, tracker, run_id, state)
    else:
        (init, tags), rung = prepare_init(spec, plan, target, tracker), {}
    from rtl.sweep.objective import objective_hooks

    eff = effective_sources(tags.get("rtl.weights_path"), spec.search.sources.by)
    if eff:
        tags = tags | {"rtl.effective_sources": eff}
    from rtl.sweep.candidates import pretrained_mask

    cand_mask = pretrained_mask(tags.get("rtl.weights_path"))
    if cand_mask:
        tags = tags | {"rtl.candidate_mask": cand_mask}
    obj, val_metrics = objective_hooks(spec)
    starts = int(_retry(tracker.client.get_run)(run_id).data.tags.get("rtl.finetune_starts", 0)) + 1
    tracker.set_tags(run_id, tags | {"rtl.finetune_starts": starts})  # > 1: resumed (or re-run) fine-tuning
    done_epochs = int(state.get("epoch", 0))  # reported before the restart: never logged/reported again
    # epochs logged to MLflow but not checkpointed by Tune before a kill are run again: log each step once
    logged = {m.step for m in _retry(tracker.client.get_metric_history)(run_id, "val_error")}
    latest: dict[int, dict[str, Any]] = {}

    def keep_state(epoch: int, st: dict[str, Any]) -> None:
        latest.clear()
        latest[epoch] = st

    def on_epoch(epoch: int, m: dict[str, Any]) -> bool:
        e = epoch + 1
        if e <= done_epochs:  # only in a seeded replay (no resume state): already logged and reported
            return False
        if e not in logged:  # every inspection metric of the val split (val_macro_f1, val_auroc, ...) too
            tracker.log_metrics(run_id, {k: m[k] for k in m if k in ("train_loss", "best_val_error") or (
                k.startswith("val_") and isinstance(m[k], float) and math.isfinite(m[k]))}, step=e)
        if e < spec.budget.finetune_epochs:  # the last epoch is reported as final
            # the selected-so-far epoch's values: what the trial would end with if stopped now
            _report({"val_error": float(m["best_val_error"]), "objective_loss": obj.at_best(m), "epoch": e,
                     "finished": False} | rung.get("result", {}), {"epoch": e} | rung.get("state", {}),
                    latest.get(epoch))
        return False

    ft = FinetuneConfig(target=target, init=init, model=spec.backbone, lr=t.lr, freeze_depth=t.freeze_depth,
                        reg=t.regularizer, reg_alpha=t.reg_strength or 0.01, epochs=spec.budget.finetune_epochs,
                        seed=t.seed, batch_size=spec.budget.batch_size, min_side=spec.image.min_side,
                        max_side=spec.image.max_side, device="cuda" if spec.resources.gpus > 0 else "cpu",
                        keep_state=True)  # model folder + inspection metrics (issue 11)
    if fit_state is not None:
        log.info("trial %s resumes fine-tuning after epoch %d", trial_id, done_epochs)
    res = run_finetune(ft, on_epoch=on_epoch, resume_state=fit_state, state_callback=keep_state,
                       val_metrics=val_metrics)
    final = {"val_error": float(res.val_error), "test_error": res.test_error, "epoch": len(res.history),
             "finished": True, "best_epoch": res.best_epoch} | obj.final(res) | rung.get("final", {}) | (
                 {"effective_sources": eff} if eff else {}) | ({"candidate_mask": cand_mask} if cand_mask else {}) | (
                 {"candidate": tags["rtl.candidate"]} if tags.get("rtl.candidate") else {}) | (
                 {"specialists": tags["rtl.specialists"]} if tags.get("rtl.specialists") else {})
    _log_artifacts(tracker, run_id, res, tags.get("rtl.weights_path"))
    from rtl.sweep.deliver import save_trial_model  # model folder + inspection metrics (issue 11)

    save_trial_model(spec, target_name, t.to_config(), ft, res, tracker=tracker, run_id=run_id, tags=tags)
    # the tag before the metrics: a kill after it resumes into "finished" (never fine-tunes again), and
    # the final metrics are logged once by whichever start gets there
    tracker.set_tags(run_id, {"rtl.final": json.dumps(final),
                              "rtl.resumed_after_epoch": int(fit_state["epoch"]) + 1 if fit_state else 0})
    _log_final(tracker, run_id, final)
    tracker.finish(run_id)
    _report(final, {"epoch": final["epoch"], "final": final})


def _log_final(tracker: Tracker, run_id: str, final: dict[str, Any]) -> None:
    """final_val_error / final_test_error (and `final_val_<m>` / `final_test_<m>` of the objective's
    metric, e.g. final_val_macro_f1), logged once per run whatever the kills in between."""
    if not _retry(tracker.client.get_metric_history)(run_id, "final_val_error"):
        extra = {f"final_{k}": float(v) for k, v in final.items() if k.startswith(("val_", "test_"))
                 and k not in ("val_error", "test_error") and isinstance(v, float) and math.isfinite(v)}
        tracker.log_metrics(run_id, {"final_val_error": final["val_error"], "final_test_error": final["test_error"]}
                            | extra)



def _log_artifacts(tracker: Tracker, run_id: str, res: Any, weights_path: str | None) -> None:
    """Confusion matrix PNG (matplotlib Agg) and the importance weights used, if any."""
    with tempfile.TemporaryDirectory() as d:
        if res.confusion is not None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(3 + 0.3 * len(res.classes), 3 + 0.3 * len(res.classes)))
            ax.imshow(res.confusion, cmap="Blues")
            ax.set(xticks=range(len(res.classes)), yticks=range(len(res.classes)), xlabel="predicted", ylabel="true")
            ax.set_xticklabels(res.classes, rotation=90, fontsize=6)
            ax.set_yticklabels(res.classes, fontsize=6)
            fig.tight_layout()
            fig.savefig(Path(d) / "confusion.png", dpi=80)
            plt.close(fig)
            tracker.log_artifact(run_id, str(Path(d) / "confusion.png"))
        if weights_path and os.path.exists(weights_path):
            tracker.log_artifact(run_id, weights_path)
