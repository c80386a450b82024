"""Typed trial parameters and pretraining plan (issue 15): parsed once where a trial starts, plain dicts at
the Tune/Optuna boundary, and what a sweep started before the change stored still parses (resume)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

sys.path.insert(0, str(Path(__file__).parent))
from sweep_helpers import write_spec  # noqa: E402

from rtl.artifacts.trial import REGULARIZERS, SCHEDULERS, SEARCHERS, PretrainPlan, TrialParams  # noqa: E402
from rtl.errors import ConfigError  # noqa: E402
from rtl.sweep.spec import load_spec, save_resolved  # noqa: E402

# `config["trial"]` exactly as the searcher and the confirm step wrote it before this change
OLD_SEARCHED = {"number": 4, "control": "", "seed": 0, "init": "corpus", "lr": 0.02, "freeze_depth": 1,
                "regularizer": "l2sp", "reg_strength": 0.003, "mask": ["a"], "temperature": 2.5}
OLD_CONTROL = {"number": 0, "control": "scratch", "seed": 1, "init": "scratch", "lr": 0.03, "freeze_depth": 0,
               "regularizer": "none", "reg_strength": 0.0, "mask": None, "temperature": None}
OLD_GENERALIST = {"number": 1, "control": "generalist", "seed": 0, "init": "generalist", "lr": 0.03,
                  "freeze_depth": 0, "regularizer": "none", "reg_strength": 0.0, "mask": [], "temperature": None}
OLD_CONFIRM = {**OLD_SEARCHED, "seed": 1, "kind": "confirm"}


@pytest.mark.parametrize("old", [OLD_SEARCHED, OLD_CONTROL, OLD_GENERALIST, OLD_CONFIRM])
def test_configs_stored_before_the_change_parse_and_round_trip(old: dict) -> None:
    t = TrialParams.parse(old)
    assert (t.number, t.seed, t.lr, t.mask, t.temperature) == (old["number"], old["seed"], old["lr"], old["mask"],
                                                               old["temperature"])
    assert t.kind == old.get("kind", "search") and t.searched == (not old["control"])
    cfg = t.to_config()
    assert isinstance(cfg, dict) and {k: cfg[k] for k in old} == old  # Tune sees the same keys and values
    assert TrialParams.parse(cfg) == t


def test_mask_label_is_the_optuna_attr() -> None:
    assert TrialParams.parse(OLD_SEARCHED).mask_label == "a"
    assert TrialParams.parse(OLD_GENERALIST).mask_label == "generalist"
    assert TrialParams.parse(OLD_CONTROL).mask_label == "none"


@pytest.mark.parametrize("patch, words", [
    ({"regularizer": "l3"}, "regularizer"),
    ({"lr": 0}, "lr"),
    ({"init": "scratch"}, "uses no source mask"),
    ({"mask": []}, "non-empty mask"),
    ({"lr2": 0.1}, "lr2"),
])
def test_bad_config_is_one_line_naming_the_field(patch: dict, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        TrialParams.parse(OLD_SEARCHED | patch, "r/trial config")
    assert str(e.value).startswith("r/trial config: ") and words in str(e.value) and "\n" not in str(e.value)


def _spec(tmp_path: Path, space: str):
    search = {"sources": {"space": space}, "temperature": {"low": 0.5, "high": 4.0, "allow_off": True},
              "lr": {"low": 0.01, "high": 0.1}, "freeze_depth": {"low": 0, "high": 1},
              "regularizer": {"choices": ["none", "l2sp"], "strength": {"low": 0.001, "high": 0.1}}}
    spec = load_spec(write_spec(tmp_path, trials=6, search=search,
                                scheduler={"name": "rungs" if space == "ranked" else "asha"}))
    save_resolved(spec, os.path.join(spec.results_dir, "spec.json"))
    return spec


# Optuna params of a searched trial exactly as a sweep before the change stored them (bit / ranked space)
OLD_PARAMS = {
    "bits": ({"lr": 0.02, "freeze_depth": 1, "regularizer": "l2sp", "reg_strength": 0.01, "anchor": "b", "src.a": 1,
              "importance": "on", "temperature": 2.0},
             {"lr": FloatDistribution(0.01, 0.1, log=True), "freeze_depth": IntDistribution(0, 1),
              "regularizer": CategoricalDistribution(["none", "l2sp"]),
              "reg_strength": FloatDistribution(0.001, 0.1, log=True), "anchor": CategoricalDistribution(["a", "b"]),
              "src.a": CategoricalDistribution([0, 1]), "importance": CategoricalDistribution(["off", "on"]),
              "temperature": FloatDistribution(0.5, 4.0, log=True)}),
    "ranked": ({"lr": 0.02, "freeze_depth": 0, "regularizer": "none", "k": 2, "drop": 1, "add": 0,
                "importance": "off"},
               {"lr": FloatDistribution(0.01, 0.1, log=True), "freeze_depth": IntDistribution(0, 1),
                "regularizer": CategoricalDistribution(["none", "l2sp"]), "k": IntDistribution(0, 2),
                "drop": CategoricalDistribution([0, 1, 2]), "add": CategoricalDistribution([0, 1, 2]),
                "importance": CategoricalDistribution(["off", "on"])}),
}


@pytest.mark.parametrize("space", ["bits", "ranked"])
def test_old_optuna_trials_resume_as_typed_params_and_plans(tmp_path: Path, space: str) -> None:
    """A COMPLETE trial stored by a sweep started before the change: the confirm step re-runs it (typed
    config, a plain dict for Tune), and an orphan of it re-enqueued is asked again as the same trial."""
    from rtl.sweep.runner import confirm_configs
    from rtl.sweep.search import OptunaAskTell, open_study, reconcile_orphans
    from rtl.sweep.trial import pretrain_plan

    spec = _spec(tmp_path, space)
    params, dists = OLD_PARAMS[space]
    study = open_study(spec.optuna_url(), f"{spec.name}/tgt")
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.2,
                                              user_attrs={"rtl.tune_trial_id": "old1", "rtl.mask": "b,a"}))
    best = study.trials[0]
    units = ["a", "b"]
    (cfg,) = confirm_configs(spec.model_copy(update={"seeds": [0, 1]}), "tgt", units, best)
    t = TrialParams.parse(cfg)
    assert t.kind == "confirm" and t.seed == 1 and t.lr == 0.02 and type(cfg) is dict
    plan = pretrain_plan(spec, t)
    assert isinstance(plan, PretrainPlan) and plan.space == space
    if space == "bits":
        assert sorted(t.mask) == ["a", "b"] and t.temperature == 2.0 and t.regularizer == "l2sp"
        assert (plan.strategy, plan.temperature, plan.continue_generalist, plan.rungs) == ("weighted", 2.0, False, [])
        assert plan.view_args() == {"datasets": ["a", "b"], "domains": None}
    else:
        assert (t.k, t.drop, t.add, t.mask, t.temperature) == (2, 1, 0, ["b"], None)  # top-2 minus the 1st
        assert plan.strategy == "subset" and plan.continue_generalist and plan.rungs == spec.budget.rungs
    # an orphan RUNNING trial with the old params: FAIL + re-enqueued; the searcher asks it as typed params
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, state=optuna.trial.TrialState.RUNNING,
                                              user_attrs={"rtl.tune_trial_id": "lost"}))
    reconcile_orphans(study, set())
    s = OptunaAskTell(storage_url=spec.optuna_url_template(), study_name=f"{spec.name}/tgt",
                      space=spec.search.model_dump(), units=units)
    again = TrialParams.parse(s.suggest("new")["trial"])
    assert (again.lr, again.mask, again.temperature) == (t.lr, t.mask, t.temperature)


def test_fixed_inits_plan_no_pretraining(tmp_path: Path) -> None:
    from rtl.sweep.trial import pretrain_plan

    spec = _spec(tmp_path, "ranked")
    for old in (OLD_CONTROL, OLD_GENERALIST):
        plan = pretrain_plan(spec, TrialParams.parse(old))
        assert plan.fixed and plan.strategy == "none" and plan.mask == [] and plan.init == old["init"]
    # the dict form other callers use (study runner, benchmarks): any other init = pretrain the mask
    plan = pretrain_plan(spec, {"init": "pretrained", "mask": ["b"], "seed": 3, "temperature": None})
    assert (plan.init, plan.strategy, plan.seed) == ("corpus", "subset", 3)


def test_names_live_in_one_place() -> None:
    """Spec validation, the fine-tune config and the regulariser registry agree with rtl.artifacts.trial."""
    from pydantic import ValidationError

    from rtl.sweep.spec import Regularizer, Scheduler, Searcher
    from rtl.train.finetune import FinetuneConfig
    from rtl.train.regularizers import REGULARIZERS as REGISTRY

    assert set(REGISTRY.names()) == set(REGULARIZERS)
    for name in REGULARIZERS:
        assert Regularizer(choices=[name]).choices == [name] and FinetuneConfig(target="x", reg=name).reg == name
    with pytest.raises(ValidationError, match="valid: none, l2sp, delta"):
        Regularizer(choices=["l3"])
    for name in SEARCHERS:
        assert Searcher(name=name).name == name
    for name in SCHEDULERS:
        assert Scheduler(name=name).name == name
    with pytest.raises(ValidationError, match="valid: random, tpe"):
        Searcher(name="grid")


def test_importance_trial_is_pretrained_from_scratch_through_ask_orphan_and_confirm(tmp_path: Path) -> None:
    """The ranked space's enqueued importance trial (every source, weighted at `importance_trial`) is the
    one ranked trial pretrained from scratch: asked, re-enqueued after a lost driver, and confirmed with
    another seed, it stays so; a sampled trial with the same params continues the generalist."""
    from rtl.artifacts.trial import IMPORTANCE_TRIAL
    from rtl.sweep.runner import confirm_configs, controls_for
    from rtl.sweep.search import OptunaAskTell, open_study, reconcile_orphans
    from rtl.sweep.trial import pretrain_plan, samples_per_epoch

    spec = _spec(tmp_path, "ranked")
    units = ["a", "b"]
    enq = controls_for(spec, units)
    names = [n for n, _, _ in enq]
    assert names[names.index(IMPORTANCE_TRIAL) - 1] in ("scratch", "uniform")  # first after the controls
    s = OptunaAskTell(storage_url=spec.optuna_url_template(), study_name=f"{spec.name}/tgt",
                      space=spec.search.model_dump(), units=units, controls=enq)
    asked = [TrialParams.parse(s.suggest(f"t{i}")["trial"]) for i in range(len(names))]
    imp = [t for t in asked if t.enqueued == IMPORTANCE_TRIAL]
    assert len(imp) == 1 and imp[0].weighted_scratch and sorted(imp[0].mask) == units
    assert imp[0].temperature == spec.search.sources.importance_trial == 1.0
    # importance_init (default): its pretraining is also fine-tuned at both ends of search.lr -- the same plan
    lr_ends = {n for n in names if n.startswith(f"{IMPORTANCE_TRIAL}-lr-")}  # as many as the budget leaves room for
    assert f"{IMPORTANCE_TRIAL}-lr-high" in lr_ends  # the high end first
    assert {t.enqueued for t in asked if t.weighted_scratch} == {IMPORTANCE_TRIAL} | lr_ends
    plan = pretrain_plan(spec, imp[0])
    assert all(pretrain_plan(spec, t) == plan for t in asked if t.enqueued in lr_ends)
    assert {t.lr for t in asked if t.enqueued in lr_ends} <= {spec.search.lr.low, spec.search.lr.high}
    assert (plan.strategy, plan.continue_generalist, plan.rungs, plan.subset_fraction) == ("weighted", False, [], None)
    assert plan.epochs == spec.budget.pretrain_epochs and plan.samples_per_epoch == samples_per_epoch(spec)
    same = TrialParams.parse(imp[0].to_config() | {"enqueued": ""})
    assert pretrain_plan(spec, same).continue_generalist  # the searcher's own proposal: a continuation
    # lost with the driver: re-enqueued with its label, asked again from scratch
    reconcile_orphans(open_study(spec.optuna_url(), f"{spec.name}/tgt"), set())
    again = [TrialParams.parse(s.suggest(f"r{i}")["trial"]) for i in range(len(names))]
    assert {t.enqueued for t in again if t.weighted_scratch} == {IMPORTANCE_TRIAL} | lr_ends
    # it wins: the confirm seed is pretrained from scratch too
    study = open_study(spec.optuna_url(), f"{spec.name}/tgt")
    best = [t for t in study.trials if t.user_attrs.get("rtl.enqueued") == IMPORTANCE_TRIAL][0]
    (cfg,) = confirm_configs(spec.model_copy(update={"seeds": [0, 1]}), "tgt", units, best)
    conf = TrialParams.parse(cfg)
    assert conf.weighted_scratch and conf.seed == 1 and not pretrain_plan(spec, conf).continue_generalist
    assert pretrain_plan(spec, imp[0].to_config()) == plan  # the dict form (study runner) plans the same
    with pytest.raises(ConfigError, match="needs a source mask and a temperature"):
        TrialParams.parse(OLD_SEARCHED | {"temperature": None, "enqueued": IMPORTANCE_TRIAL})


def test_importance_trial_can_be_switched_off(tmp_path: Path) -> None:
    from rtl.artifacts.trial import IMPORTANCE_TRIAL
    from rtl.sweep.runner import controls_for

    spec = _spec(tmp_path, "ranked")
    off = spec.model_copy(update={"search": spec.search.model_copy(update={
        "sources": spec.search.sources.model_copy(update={"importance_trial": None})})})
    assert IMPORTANCE_TRIAL in [n for n, _, _ in controls_for(spec, ["a", "b"])]
    assert IMPORTANCE_TRIAL not in [n for n, _, _ in controls_for(off, ["a", "b"])]


def test_importance_top_is_a_second_from_scratch_trial_on_the_ranking_top(tmp_path: Path) -> None:
    """`importance_top` enqueues the ranking's top fraction, weighted at its own temperature, pretrained from
    scratch like the all-source importance trial, never stopped by a scheduler, named by what it did."""
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    from rtl.report.sweep import _kind
    from rtl.sweep.runner import controls_for
    from rtl.sweep.scheduler import never_stopped
    from rtl.sweep.search import OptunaAskTell
    from rtl.sweep.spec import ImportanceTop
    from rtl.sweep.trial import pretrain_plan
    from rtl.sweep.verdict import subset_name as _subset_name

    spec = _spec(tmp_path, "ranked")
    top = spec.model_copy(update={"search": spec.search.model_copy(update={"sources": spec.search.sources.model_copy(
        update={"importance_top": ImportanceTop(fraction=0.5, temperature=2.0)})})})
    order = ["c", "a", "b", "d"]  # the target's ranking
    assert "top-2-imp" not in [n for n, _, _ in controls_for(spec, order)]  # off by default
    enq = controls_for(top, order)
    names = [n for n, _, _ in enq]
    assert names.index("top-all-imp") + 1 == names.index("top-2-imp")  # before the top-k continuations
    s = OptunaAskTell(storage_url=top.optuna_url_template(), study_name=f"{top.name}/tgt",
                      space=top.search.model_dump(), units=order, controls=enq)
    asked = [TrialParams.parse(s.suggest(f"t{i}")["trial"]) for i in range(len(names))]
    (t,) = [a for a in asked if a.enqueued == "top-2-imp"]
    assert t.mask == ["c", "a"] and t.temperature == 2.0 and t.weighted_scratch
    plan = pretrain_plan(top, t)
    assert (plan.strategy, plan.continue_generalist, plan.epochs) == ("weighted", False, top.budget.pretrain_epochs)
    sampled = TrialParams.parse(s.suggest("sampled")["trial"])  # after the enqueued ones: the sampler's
    assert never_stopped({"trial": t.to_config()})
    # a sampled continuation may be stopped; a sampled fine-tune of the importance pretraining is not (paid)
    assert never_stopped({"trial": sampled.to_config()}) == sampled.importance_init
    ft = create_trial(params={"temperature": 2.0, "k": 2},
                      distributions={"temperature": FloatDistribution(0.5, 8.0), "k": IntDistribution(0, 4)},
                      value=0.1, user_attrs={"rtl.enqueued": "top-2-imp", "rtl.mask": "c,a", "rtl.effective_sources": "c"})
    assert _kind(ft) == "importance, top-2, from scratch (T=2.0)"
    assert _subset_name(ft) == "(the ranking's top 2, importance-weighted at T=2.0 from scratch; 90 % of its images from c)"
    assert ImportanceTop(fraction=0.01).k(22) == 1 and ImportanceTop().k(22) == 7


def test_effective_sources_are_where_the_weighted_images_come_from(tmp_path: Path) -> None:
    import json

    from rtl.sweep.trial import effective_sources

    classes = [{"id": 0, "dataset": "a", "label": "x", "weight": 0.05}, {"id": 1, "dataset": "b", "label": "y",
                                                                          "weight": 0.9},
               {"id": 2, "dataset": "c", "label": "z", "weight": 0.05}]
    p = tmp_path / "weights.json"
    p.write_text(json.dumps({"corpus_version": "v", "temperature": 1.0, "classes": classes,
                             "datasets": {"a": 0.05, "b": 0.9, "c": 0.05}, "domains": {"d1": 1.0}}))
    assert effective_sources(str(p)) == "b"  # 90 % of the images: b alone
    assert effective_sources(str(p), "domains") == "d1"
    p.write_text(json.dumps({"corpus_version": "v", "classes": classes, "datasets": {"a": 0.3, "b": 0.5, "c": 0.2}}))
    assert effective_sources(str(p)) == "b,a,c"  # by decreasing mass until 90 %
    assert effective_sources(None) == "" and effective_sources(str(tmp_path / "gone.json")) == ""
    p.write_text("{not json")
    assert effective_sources(str(p)) == ""  # an explanation only: a bad file never fails the trial


def test_report_names_the_importance_trial_by_what_it_did() -> None:
    """The report's trial table and verdict say "every source, importance-weighted from scratch" and where
    its images came from, instead of a 22-name mask that hides the choice the weights made."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from rtl.artifacts.trial import IMPORTANCE_TRIAL
    from rtl.report.sweep import _kind, _sources
    from rtl.sweep.verdict import subset_name as _subset_name

    imp = create_trial(params={"temperature": 1.0}, distributions={"temperature": FloatDistribution(0.5, 8.0)},
                       value=0.1, user_attrs={"rtl.enqueued": IMPORTANCE_TRIAL, "rtl.mask": "a,b,c",
                                              "rtl.effective_sources": "b"})
    assert _kind(imp) == "importance, from scratch (T=1.0)"
    assert _sources(imp) == "a,b,c (90 % of the weighted images: b)"
    assert _subset_name(imp) == "(every source, importance-weighted at T=1.0 from scratch; 90 % of its images from b)"
    cand = "T=0.5, seed 1 (candidate 2 of 3, picked after epoch 1)"  # rtl.sweep.candidates: what it pretrained
    best = create_trial(params={"temperature": 1.0}, distributions={"temperature": FloatDistribution(0.5, 8.0)},
                        value=0.1, user_attrs={"rtl.enqueued": IMPORTANCE_TRIAL, "rtl.mask": "a,b,c",
                                               "rtl.candidate": cand})
    assert _kind(best) == f"importance, from scratch, best candidate: {cand}"
    assert _subset_name(best) == f"(every source, the best importance-weighted candidate from scratch, {cand})"
    one = "on the specialists' pick, 2 source(s) at T=1, seed 1"  # the default: one candidate, nothing compared
    pick = create_trial(params={"temperature": 1.0}, distributions={"temperature": FloatDistribution(0.5, 8.0)},
                        value=0.1, user_attrs={"rtl.enqueued": IMPORTANCE_TRIAL, "rtl.mask": "a,b,c",
                                               "rtl.candidate": one, "rtl.candidate_mask": "a,c"})
    assert _kind(pick) == f"importance, from scratch, {one}" and "best" not in _kind(pick)
    assert _subset_name(pick) == ("(2 sources (a,c), the importance trial's pretraining (importance-weighted from "
                                  "scratch on them))")
    for label in ("top-all-imp-lr-high", None):  # enqueued at the lr range's high end, or sampled
        ft = create_trial(params={"lr": 0.1, "pretrain": "importance"},
                          distributions={"lr": FloatDistribution(0.003, 0.1, log=True),
                                         "pretrain": CategoricalDistribution(["continue", "importance"])},
                          value=0.1, user_attrs={"rtl.mask": "a,b,c", "rtl.effective_sources": "b"}
                          | ({"rtl.enqueued": label} if label else {}))
        assert _kind(ft) == f"{'ranking' if label else 'search'}: importance trial's pretraining, lr 0.1"
        assert _subset_name(ft) == ("(every source, the importance trial's pretraining (importance-weighted from "
                                    "scratch) fine-tuned at lr 0.1; 90 % of its images from b)")
    top = create_trial(value=0.2, user_attrs={"rtl.enqueued": "top-2", "rtl.mask": "a,b"})
    assert (_kind(top), _sources(top), _subset_name(top)) == ("ranking top-2", "a,b", "a,b")
    ctl = create_trial(value=0.3, user_attrs={"rtl.control": "uniform", "rtl.mask": "a,b,c"})
    assert _kind(ctl) == "uniform"


@pytest.mark.parametrize("best_vals, words", [
    ([0.30, 0.34], "within seed noise of the generalist, so either is a defensible deployment"),
    ([0.60, 0.62], "worse than the generalist by more than the noise and the generalist's model was not kept"),
    ([0.60, 0.62, "delivered"], "delivered as champion is the generalist reference (control trial #3, seed 1)"),
    ([0.05, 0.06], None),  # the subset is named: no note
])
def test_report_says_when_the_champion_is_not_the_recommendation(tmp_path: Path, best_vals, words,
                                                                monkeypatch) -> None:
    """The verdict may recommend the generalist: the report says which model was delivered (the reference
    when the search is worse beyond the noise and its folder was kept), and whether the best searched
    trial is within the noise."""
    from types import SimpleNamespace

    from optuna.trial import create_trial

    import rtl.sweep.deliver as deliver
    from rtl.report.sweep import _verdict_md

    if best_vals[-1] == "delivered":
        best_vals = best_vals[:-1]
        monkeypatch.setattr(deliver, "champion_choice",
                            lambda *a, **k: deliver.Choice(3, 1, "generalist", []))

    spec = SimpleNamespace(target_names=lambda: ["tgt"], target_paths=lambda: [str(tmp_path / "missing")])
    best = create_trial(value=best_vals[0], user_attrs={"rtl.mask": "a"})
    best.number = 7
    rows = {"best (search)": {"vals": best_vals}, "generalist": {"vals": [0.32, 0.36]},
            "uniform": {"vals": [0.45, 0.47]}}
    md = "\n".join(_verdict_md(spec, "tgt", {"rows": rows, "best": best}))
    assert "**Verdict:**" in md
    if words is None:
        assert "subset a beats" in md and "champion" not in md
    else:
        assert "recommend generalist" in md and words in md and "best searched trial (#7)" in md
