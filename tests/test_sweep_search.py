"""The Optuna ask/tell searcher: never an empty source subset; ASHA-stopped trials stored as PRUNED;
idempotent tells; trials lost with a killed driver re-enqueued (no Ray cluster needed)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from rtl.sweep.search import OptunaAskTell, accounted_trials, define_space, open_study, reconcile_orphans

SPACE = {"lr": {"low": 1e-3, "high": 1e-1}, "freeze_depth": {"low": 0, "high": 2},
         "regularizer": {"choices": ["none", "l2sp"], "strength": {"low": 1e-3, "high": 1e-1}},
         "temperature": {"low": 0.5, "high": 4.0, "allow_off": True}}
UNITS = ["a", "b", "c"]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_mask_never_empty(sampler: str) -> None:
    from rtl.sweep.search import make_sampler

    study = optuna.create_study(sampler=make_sampler(sampler, 0, 5))
    seen = set()
    for _ in range(120):
        t = study.ask()
        p = define_space(t, SPACE, UNITS, None)
        assert p["mask"], "empty source subset proposed"
        seen.add(tuple(p["mask"]))
        # reward the smallest subsets so TPE is pushed towards the empty one (it must never reach it)
        study.tell(t, float(len(p["mask"])))
    assert len(seen) >= 5  # the encoding still reaches most non-empty subsets


def _searcher(tmp_path: Path, **kw) -> OptunaAskTell:
    return OptunaAskTell(storage_url=f"sqlite:///{tmp_path / 'o.db'}", study_name="s/t", space=SPACE, units=UNITS,
                         seed=0, n_startup_trials=2, **kw)


def _states(tmp_path: Path) -> list[str]:
    return [t.state.name for t in open_study(f"sqlite:///{tmp_path / 'o.db'}", "s/t").trials]


def test_stopped_trials_are_pruned_complete_only_when_finished(tmp_path: Path) -> None:
    s = _searcher(tmp_path)
    a, b, c = (s.suggest(i)["trial"] for i in ("ta", "tb", "tc"))
    assert [a["number"], b["number"], c["number"]] == [0, 1, 2]
    for tid in ("ta", "tb"):
        s.on_trial_result(tid, {"val_error": 0.4, "epoch": 1, "finished": False})
    s.on_trial_complete("ta", {"val_error": 0.4, "epoch": 1, "finished": False})  # ASHA stopped it
    s.on_trial_complete("tb", {"val_error": 0.3, "test_error": 0.35, "epoch": 4, "finished": True})
    s.on_trial_complete("tc", None, error=True)
    s.on_trial_complete("tb", {"val_error": 0.1, "epoch": 4, "finished": True})  # re-reported: ignored
    study = open_study(f"sqlite:///{tmp_path / 'o.db'}", "s/t")
    t0, t1, t2 = study.trials
    assert (t0.state, t1.state, t2.state) == (TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL)
    assert t0.intermediate_values == {1: 0.4}
    assert t1.value == 0.3 and t1.user_attrs["rtl.test_error"] == 0.35


def test_controls_first_and_orphans_reenqueued(tmp_path: Path) -> None:
    ctl = [("scratch", 0, {"lr": 0.01, "regularizer": "none"}),
           ("uniform", 0, {"lr": 0.01, "regularizer": "none", "freeze_depth": 0, "anchor": "a", "src.b": 1,
                           "src.c": 1, "importance": "off"})]
    s = _searcher(tmp_path, controls=ctl)
    first = s.suggest("t1")["trial"]
    second = s.suggest("t2")["trial"]
    assert (first["control"], first["init"], first["mask"]) == ("scratch", "scratch", None)
    assert (second["control"], second["mask"], second["temperature"]) == ("uniform", ["a", "b", "c"], None)
    # driver dies; Tune's last checkpoint knew t1 only -> t2 is an orphan, its control must run again
    s2 = _searcher(tmp_path, controls=ctl)
    assert reconcile_orphans(s2.study, {"t1"}) == [1]
    again = s2.suggest("t3")["trial"]
    assert again["control"] == "uniform" and again["mask"] == ["a", "b", "c"]
    assert _states(tmp_path) == ["RUNNING", "FAIL", "RUNNING"]
    # the restored searcher finds t1 through storage and tells it once
    s2.on_trial_complete("t1", {"val_error": 0.2, "epoch": 2, "finished": True})
    assert _states(tmp_path) == ["COMPLETE", "FAIL", "RUNNING"]


def test_pickle_roundtrip_reopens_study(tmp_path: Path) -> None:
    import pickle

    s = _searcher(tmp_path)
    s.suggest("x")
    s3 = pickle.loads(pickle.dumps(s))
    s3.on_trial_complete("x", {"val_error": 0.5, "epoch": 2, "finished": True})
    assert _states(tmp_path) == ["COMPLETE"]


def _open(url: str) -> int:
    from rtl.sweep.search import open_study

    return len(open_study(url, "race/tgt").get_trials())


def test_processes_opening_a_new_study_storage_at_once_all_succeed(tmp_path) -> None:
    """Regression: `rtl sweep status` reading optuna.db while the sweep creates it raced on Optuna's schema
    set-up (IntegrityError on alembic_version) and killed the sweep."""
    import multiprocessing as mp

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with mp.get_context("spawn").Pool(3) as pool:
        assert pool.map(_open, [url] * 3, chunksize=1) == [0] * 3


def test_orphan_result_is_reattached_and_its_twin_withdrawn(tmp_path: Path) -> None:
    """A result that arrives for a trial declared an orphan is kept (never dropped) and the re-enqueued
    copy is withdrawn, so the budget is not spent twice and no WAITING trial is left."""
    s = _searcher(tmp_path)
    s.suggest("t1")
    s.suggest("t2")
    assert reconcile_orphans(s.study, {"t1"}) == [1]
    s2 = _searcher(tmp_path)
    s2.on_trial_complete("t2", {"val_error": 0.25, "epoch": 2, "finished": True})
    trials = open_study(f"sqlite:///{tmp_path / 'o.db'}", "s/t").trials
    assert [t.state.name for t in trials] == ["RUNNING", "FAIL", "FAIL", "COMPLETE"]
    assert trials[2].user_attrs["rtl.superseded"] and trials[3].value == 0.25
    assert trials[3].user_attrs["rtl.resumed_from"] == 1 and "rtl.orphaned" not in trials[3].user_attrs
    assert accounted_trials(s2.study) == 2  # t1 running + t2's outcome; orphan and twin not counted
    s2.on_trial_complete("t2", {"val_error": 0.25, "epoch": 2, "finished": True})  # told twice: once kept
    assert len(open_study(f"sqlite:///{tmp_path / 'o.db'}", "s/t").trials) == 4


def test_accounted_trials_counts_a_retried_error_once(tmp_path: Path) -> None:
    s = _searcher(tmp_path)
    s.suggest("t1")
    s.on_trial_complete("t1", None, error=True)
    assert accounted_trials(s.study) == 1
    s.on_trial_complete("t1", {"val_error": 0.3, "epoch": 2, "finished": True})  # resumed, then finished
    assert [t.state.name for t in s.study.trials] == ["FAIL", "COMPLETE"]
    assert accounted_trials(s.study) == 1


def test_pickled_searcher_holds_no_expanded_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray pickles the searcher into tuner.pkl in the results dir: the URL template goes in, never the secret."""
    import pickle

    monkeypatch.setenv("RTL_TEST_DB", str(tmp_path / "secret-o.db"))
    s = OptunaAskTell(storage_url="sqlite:///${RTL_TEST_DB}", study_name="s/t", space=SPACE, units=UNITS)
    s.suggest("t1")  # the study opens with the expanded URL
    blob = pickle.dumps(s)
    assert b"secret-o.db" not in blob and b"${RTL_TEST_DB}" in blob
    assert (tmp_path / "secret-o.db").exists()


def test_ranked_mask_top_k_with_swaps() -> None:
    from rtl.sweep.search import ranked_mask

    order = ["a", "b", "c", "d", "e"]
    assert ranked_mask(order, 0, 1, 1) == []  # k = 0: the generalist alone, swaps ignored
    assert ranked_mask(order, 3, 0, 0) == ["a", "b", "c"]
    assert ranked_mask(order, 3, 2, 0) == ["a", "c"]  # drop the 2nd of the top-3
    assert ranked_mask(order, 3, 0, 2) == ["a", "b", "c", "e"]  # add the 2nd unit after the top-3
    assert ranked_mask(order, 1, 1, 0) == ["a"]  # never drop the only source
    assert ranked_mask(order, 5, 0, 1) == order  # nothing left to add


def test_ranked_space_generalist_and_subset_params() -> None:
    from optuna.trial import FixedTrial

    space = dict(SPACE, sources={"space": "ranked", "max_k": None, "swaps": 2})
    gen = define_space(FixedTrial({"lr": 0.01, "freeze_depth": 0, "regularizer": "none", "k": 0, "drop": 0,
                                   "add": 0}), space, ["b", "a", "c"], None)
    assert gen["init"] == "generalist" and gen["mask"] == [] and gen["temperature"] is None
    sub = define_space(FixedTrial({"lr": 0.01, "freeze_depth": 0, "regularizer": "none", "k": 2, "drop": 0,
                                   "add": 1, "importance": "off"}), space, ["b", "a", "c"], None)
    assert sub["init"] == "corpus" and sub["mask"] == ["b", "a", "c"] and sub["temperature"] is None


def test_ranked_space_can_fine_tune_the_importance_pretraining(tmp_path: Path) -> None:
    """`search.sources.importance_init`: a sampled trial may pick `pretrain: importance` -- every source,
    weighted at the importance trial's T, from scratch (the same pretraining as the importance trial, so a
    cache hit) with its own fine-tune settings; enqueued trials carry their `pretrain` value fixed, and one
    enqueued before the choice existed is not given one (its label decides)."""
    from optuna.trial import FixedTrial

    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.scheduler import never_stopped

    space = dict(SPACE, sources={"space": "ranked", "max_k": None, "swaps": 2, "importance_trial": 1.0,
                                 "importance_init": True})
    order = ["b", "a", "c"]
    p = define_space(FixedTrial({"lr": 0.05, "freeze_depth": 1, "regularizer": "none", "pretrain": "importance"}),
                     space, order, None)
    assert p["importance_init"] and p["mask"] == order and p["temperature"] == 1.0 and p["k"] == 3
    tp = TrialParams(number=5, **p)
    assert tp.weighted_scratch and never_stopped({"trial": tp.to_config()})
    cont = define_space(FixedTrial({"lr": 0.05, "freeze_depth": 1, "regularizer": "none", "pretrain": "continue",
                                    "k": 1, "drop": 0, "add": 0, "importance": "off"}), space, order, None)
    assert not cont.get("importance_init") and cont["mask"] == ["b"]

    study = optuna.create_study()
    study.enqueue_trial({"lr": 0.01, "freeze_depth": 0, "regularizer": "none", "k": 3, "drop": 0, "add": 0,
                         "importance": "on", "temperature": 1.0, "pretrain": "importance"})
    study.enqueue_trial({"lr": 0.01, "freeze_depth": 0, "regularizer": "none", "k": 1, "drop": 0, "add": 0,
                         "importance": "off"})  # enqueued by a version without the choice
    imp = define_space(study.ask(), space, order, None, IMPORTANCE_TRIAL)
    assert not imp.get("importance_init") and imp["mask"] == order  # the label decides: it IS the importance trial
    old = study.ask()
    define_space(old, space, order, None, "top-1")
    assert "pretrain" not in old.params
    assert study.trials[0].params["pretrain"] == "importance"  # TPE sees the importance trial's point
    without = dict(SPACE, sources={"space": "ranked", "swaps": 2, "importance_trial": 1.0, "importance_init": False})
    t = optuna.create_study().ask()
    define_space(t, without, order, None)
    assert "pretrain" not in t.params


def test_sampled_importance_init_pretrains_like_the_importance_trial(tmp_path: Path) -> None:
    from sweep_helpers import write_spec

    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.spec import load_spec
    from rtl.sweep.trial import pretrain_plan

    spec = load_spec(write_spec(tmp_path, search={"sources": {"space": "ranked", "importance_init": True},
                                                  "temperature": {"low": 0.5, "high": 4.0, "allow_off": True},
                                                  "lr": {"low": 0.01, "high": 0.1}, "freeze_depth": {"low": 0, "high": 1}}))
    common = dict(mask=["b", "a"], k=2, temperature=1.0, freeze_depth=0)
    sampled = pretrain_plan(spec, TrialParams(number=7, lr=0.1, importance_init=True, **common))
    enqueued = pretrain_plan(spec, TrialParams(number=2, lr=0.02, enqueued=IMPORTANCE_TRIAL, **common))
    assert sampled == enqueued and not sampled.continue_generalist  # one plan -> one cache entry


def test_reenqueued_ranking_trial_keeps_its_tag(tmp_path: Path) -> None:
    """Regression (kill test, ranked space): an enqueued top-k trial lost with the driver came back
    without `rtl.enqueued`, so the report no longer knew it was a ranking trial."""
    s = _searcher(tmp_path, controls=[("top-1", 0, {"lr": 0.01, "regularizer": "none", "freeze_depth": 0,
                                                   "anchor": "a", "src.b": 0, "src.c": 0, "importance": "off"})])
    s.suggest("t1")
    assert reconcile_orphans(s.study, set()) == [0]
    again = _searcher(tmp_path)
    again.suggest("t2")
    trials = open_study(f"sqlite:///{tmp_path / 'o.db'}", "s/t").trials
    assert trials[1].user_attrs.get("rtl.enqueued") == "top-1" and trials[1].user_attrs["rtl.reenqueued_from"] == 0


def test_suggestions_carry_the_trainable_base_config_through_a_pickle(tmp_path: Path) -> None:
    """Every suggestion holds the trainable's fixed part (results dir, target), also from a searcher restored
    from its pickle (what Tuner.restore does after a kill), so no trial can run without it."""
    import pickle

    base = {"rtl": {"results_dir": str(tmp_path / "res"), "target": "t"}}
    s = pickle.loads(pickle.dumps(_searcher(tmp_path, base=base)))
    cfg = s.suggest("t1")
    assert cfg["rtl"] == base["rtl"] and cfg["trial"]["number"] == 0
    cfg["rtl"]["target"] = "changed"  # a suggestion is a copy: Tune may mutate it
    assert s.suggest("t2")["rtl"]["target"] == "t"
