"""Specialists (rtl.sweep.specialists): a short from-scratch pretraining on each source alone, probed on the
target by a cross-validated log-loss; the importance trial's `specialists` candidate keeps the sources
before the largest gap of those losses. No Ray: pretraining runs in-process (train_workers 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sweep_helpers import write_spec

from rtl.errors import ConfigError, RtlError
from rtl.sweep.spec import load_spec, spec_from_dict


def _spec(tmp_path: Path, variants: list[dict], **cand):
    return load_spec(write_spec(
        tmp_path, name="spec",
        search={"sources": {"space": "ranked", "importance_candidates": {"variants": variants, "cut": 0.5,
                                                                 **{"own": True, **cand}}},
                "temperature": {"low": 0.5, "high": 4.0, "allow_off": True}, "lr": {"low": 0.01, "high": 0.1},
                "freeze_depth": {"low": 0, "high": 1}},
        budget={"pretrain_epochs": 2, "finetune_epochs": 1, "trials_per_target": 2, "max_concurrent": 1,
                "batch_size": 8}))


def test_cv_probe_loss_ranks_features_that_separate_the_labels_first() -> None:
    from rtl.select.signals import cv_probe_loss

    rng = np.random.default_rng(0)
    y = np.repeat(["ok", "scratch", "dent"], 12)
    code = np.unique(y, return_inverse=True)[1]
    centres = rng.normal(size=(3, 16)) * 3
    good = centres[code] + rng.normal(size=(36, 16))   # the labels' structure is in the features
    weak = centres[code] * 0.3 + rng.normal(size=(36, 16))
    noise = rng.normal(size=(36, 16))                   # none of it
    losses = [cv_probe_loss(x, y) for x in (good, weak, noise)]
    assert losses[0] < losses[1] < losses[2]
    assert losses[2] > 0.8 * np.log(3)                  # chance level: ~log K nats
    assert cv_probe_loss(good, y) == losses[0]          # deterministic
    assert cv_probe_loss(good, list(y)) == losses[0]
    with pytest.raises(RtlError, match="2 classes"):
        cv_probe_loss(good, ["ok"] * 36)


@pytest.mark.parametrize("scores, max_k, chosen", [
    ({"a": 0.3, "b": 0.6, "c": 0.62, "d": 0.7, "e": 0.9}, 4, ["a"]),        # one clearly best
    ({"a": 0.47, "b": 0.52, "c": 0.62, "d": 0.69, "e": 0.70}, 4, ["a", "b"]),  # two, then the drop
    ({"b": 0.5, "a": 0.5, "c": 1.0}, 4, ["a", "b"]),                         # ties: name order
    ({"a": 0.1, "b": 0.25, "c": 0.3, "d": 0.4, "e": 0.5, "f": 5.0}, 4, ["a"]),  # the gap past max_k + 1 unseen
    ({"a": 0.4}, 4, ["a"]),
    ({}, 4, []),
    ({"a": 0.2, "b": 0.2, "c": 0.2}, 4, ["a"]),                              # no gap: the smaller set
])
def test_choose_keeps_the_sources_before_the_largest_gap(scores, max_k, chosen) -> None:
    from rtl.sweep.specialists import choose

    assert choose(scores, max_k) == chosen


def test_a_specialists_variant_keeps_the_chosen_units_in_ranking_order(tmp_path: Path) -> None:
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.candidates import candidate_list
    from rtl.sweep.specialists import fraction_of
    from rtl.sweep.trial import pretrain_plan

    spec = _spec(tmp_path, [{"specialists": True}, {"specialists": True, "temperature": 2.0}],
                 specialist_fraction=0.5)
    assert fraction_of(spec) == 0.5 and fraction_of(_spec(tmp_path / "x", [{"drop": [1]}])) is None
    plan = pretrain_plan(spec, TrialParams(number=0, seed=3, enqueued=IMPORTANCE_TRIAL, mask=["c", "a", "b"], k=3,
                                           temperature=1.0, lr=0.01))
    assert candidate_list(spec, plan, chosen=["b", "c"]) == [(["c", "a", "b"], 1.0, 3), (["c", "b"], 1.0, 4),
                                                            (["c", "b"], 2.0, 5)]
    with pytest.raises(ValueError):
        candidate_list(spec, plan)  # the specialists must have spoken first
    alone = _spec(tmp_path / "own", [{"specialists": True}], own=False)  # the variant only: one pretraining
    assert candidate_list(alone, plan, chosen=["b"]) == [(["b"], 1.0, 4)]
    empty = _spec(tmp_path / "own2", [{"names": 1.0}], own=False)  # every variant skipped: its own after all
    assert candidate_list(empty, plan, shares={"a": 0.0, "b": 0.0, "c": 0.0}) == [(["c", "a", "b"], 1.0, 3)]
    for bad in ({"specialists": True, "drop": [1]}, {"specialists": True, "names": 1.0},
                {"specialists": True, "top": 2}):
        with pytest.raises(ConfigError, match="specialists"):
            _spec(tmp_path / "y", [bad])
    with pytest.raises(ConfigError):
        _spec(tmp_path / "z", [{"specialists": True}], specialist_fraction=0.0)


def test_specialists_get_equal_compute_are_shared_by_targets_and_their_pick_is_a_candidate(tmp_path: Path) -> None:
    """End to end on the tiny corpus: one specialist per source, each with the same images whatever the
    source's size, from scratch, built once for two targets; the importance trial's candidates include the
    chosen sources, and every cut of the trial records what the specialists said."""
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep import specialists
    from rtl.sweep.candidates import best_candidate
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import pretrain_plan, specialists_said

    same = dict(
        search={"sources": {"space": "ranked", "importance_candidates": {
            "variants": [{"specialists": True}], "cut": 0.5, "specialist_fraction": 0.5, "own": True}},
            "temperature": {"low": 0.5, "high": 4.0, "allow_off": True}, "lr": {"low": 0.01, "high": 0.1},
            "freeze_depth": {"low": 0, "high": 1}},
        budget={"pretrain_epochs": 2, "finetune_epochs": 1, "trials_per_target": 2, "max_concurrent": 1,
                "batch_size": 8})
    spec = load_spec(write_spec(tmp_path, name="spec2", targets=("tgt", "other"), **same))
    gen, _ = generalist(spec, ["a", "b"])
    gen_images = [h["images"] for h in json.loads((gen / "meta.json").read_text())["history"]]
    plan = pretrain_plan(spec, TrialParams(number=0, enqueued=IMPORTANCE_TRIAL, mask=["a", "b"], k=2,
                                           temperature=1.0, lr=0.01))
    cache = Path(spec.cache_dir())
    for t in ("tgt", "other"):
        entry, _, _, cands = best_candidate(spec, plan, str(tmp_path / "targets" / t), gen)
        assert len(cands) == 2 and cands[1].sources in (1, 2)
        said = json.loads(specialists_said(entry))  # the trial's `rtl.specialists` tag
        assert said["chosen"] and set(said["probe_loss"]) == {"a", "b"}
    specs = sorted(cache.glob("spec-*"))
    assert len(specs) == 2  # one per source, shared by both targets
    for d in specs:
        meta = json.loads((d / "ckpt" / "meta.json").read_text())
        assert [h["images"] for h in meta["history"]] == [g // 2 for g in gen_images]  # half the generalist's
        assert meta["config"]["init_checkpoint"] is None and meta["config"]["datasets"] in (["a"], ["b"])
    said = [json.loads((c / specialists.SCORES_FILE).read_text()) for c in cache.glob("cut-*")]
    assert len(said) == 4 and all(sorted(s["probe_loss"]) == ["a", "b"] and s["chosen"] for s in said)
    assert all(s["chosen"] == specialists.choose(s["probe_loss"]) for s in said)
    assert specialists_said(tmp_path / "nowhere") == ""
    # a later sweep of the workspace (another name, one new target) finds them in the workspace's cache: a team
    # sweeping its targets one at a time pays the specialists once per corpus and seed, not once per sweep
    later = load_spec(write_spec(tmp_path, name="later", targets=("third",), **same))
    assert later.cache_dir() == spec.cache_dir()
    best_candidate(later, plan, str(tmp_path / "targets" / "third"), generalist(later, ["a", "b"])[0])
    assert sorted(cache.glob("spec-*")) == specs


def test_the_report_says_what_the_specialists_chose(monkeypatch) -> None:
    from types import SimpleNamespace

    import rtl.report.sweep as rep

    said = json.dumps({"chosen": ["weave_a", "weave_b"],
                       "probe_loss": {"weave_a": 0.29, "weave_b": 0.54, "stripes_a": 1.04, "grid_c": 1.2}})
    trials = [SimpleNamespace(user_attrs={}), SimpleNamespace(user_attrs={"rtl.specialists": said})]
    monkeypatch.setattr(rep, "target_trials", lambda results_dir, target: trials)
    text = "\n".join(rep._specialists_md("r", "t"))
    assert "chose **weave_a, weave_b**" in text and "weave_a 0.290, weave_b 0.540, stripes_a 1.040" in text
    trials[1].user_attrs["rtl.specialists"] = "{not json"  # a damaged attribute: no line, no traceback
    assert rep._specialists_md("r", "t") == []


def test_from_specialist_continues_the_best_specialist_for_the_rest_of_the_budget(tmp_path: Path) -> None:
    """`from_specialist`: the specialists' pick starts from the specialist of its best-probed unit (the one
    the specialists built, not a new one) and gets `length - specialist_fraction` of the generalist's images,
    under its own cache key; the trial's tag says whose specialist it continued. Without a specialists
    variant, or with nothing left of the budget, the spec is refused."""
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep import specialists
    from rtl.sweep.candidates import best_candidate
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import pretrain_plan, specialists_said

    spec = _spec(tmp_path, [{"specialists": True}], own=False, specialist_fraction=0.5)
    gen, _ = generalist(spec, ["a", "b"])
    gen_images = [h["images"] for h in json.loads((gen / "meta.json").read_text())["history"]]
    plan = pretrain_plan(spec, TrialParams(number=0, enqueued=IMPORTANCE_TRIAL, mask=["a", "b"], k=2,
                                           temperature=1.0, lr=0.01))
    target = str(tmp_path / "targets" / "tgt")
    scratch_entry, scratch_key, _, _ = best_candidate(spec, plan, target, gen)
    d = spec.model_dump()
    d["search"]["sources"]["importance_candidates"]["from_specialist"] = True
    warm = spec_from_dict(d, "warm")
    n_specs = len(list(Path(spec.cache_dir()).glob("spec-*")))
    entry, key, _, cands = best_candidate(warm, plan, target, gen)
    assert key != scratch_key and len(cands) == 1
    assert len(list(Path(spec.cache_dir()).glob("spec-*"))) == n_specs  # no specialist built twice
    said = json.loads(specialists_said(entry))
    start = said["continued"]
    assert start == said["chosen"][0] == min(said["probe_loss"], key=lambda u: (said["probe_loss"][u], u))
    meta = json.loads((entry / "ckpt" / "meta.json").read_text())
    start_ckpt = specialists.build(warm, start, plan.seed, 0.5)
    assert meta["config"]["init_checkpoint"] == str(start_ckpt)
    assert [h["images"] for h in meta["history"]] == [g // 2 for g in gen_images]  # 1 - 0.5 of the generalist's
    scratch = json.loads((scratch_entry / "ckpt" / "meta.json").read_text())
    assert scratch["config"]["init_checkpoint"] is None and [h["images"] for h in scratch["history"]] == gen_images
    assert meta["config"]["lr"] == 0.1 and meta["config"]["warmup_epochs"] > 0  # a restart at the full lr
    for bad, why in (({"variants": [{"drop": [1]}], "from_specialist": True}, "specialists"),
                     ({"variants": [{"specialists": True}], "from_specialist": True, "length": 0.2}, "length")):
        d["search"]["sources"]["importance_candidates"] = bad
        with pytest.raises(ConfigError, match=why):
            spec_from_dict(d, "bad")


def test_a_ranking_by_specialists_orders_by_probe_loss_and_builds_no_expert(tmp_path: Path, ray_session,
                                                                            monkeypatch) -> None:
    """`ranking.method: specialists`: the ranked space's order is the specialists' probe loss, best first,
    written as the sweep's ranking (one MLflow ranking run, no expert runs, no expert pretrained), read back
    on the next start; the importance trial's candidate then finds the same specialists in the cache and
    their losses and choice in the ranking (no specialist probed on the target twice, no agreement re-run)."""
    from rtl.artifacts.ranking import read_ranking
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep import specialists
    from rtl.sweep.candidates import best_candidate
    from rtl.sweep.runner import target_order
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import pretrain_plan, tracker_for

    spec = load_spec(write_spec(
        tmp_path, name="byspec",
        search={"sources": {"space": "ranked", "ranking": {"method": "specialists"},
                            "importance_candidates": {"variants": [{"specialists": True}], "specialist_fraction": 0.5}},
                "temperature": {"low": 0.5, "high": 4.0, "allow_off": True}, "lr": {"low": 0.01, "high": 0.1},
                "freeze_depth": {"low": 0, "high": 1}},
        budget={"pretrain_epochs": 2, "finetune_epochs": 1, "trials_per_target": 4, "max_concurrent": 1,
                "batch_size": 8}))
    tracker_for(spec).get_or_create_target_run("tgt")
    order = target_order(spec, "tgt", ["a", "b"])
    path = Path(spec.results_dir) / "rankings" / "tgt.json"
    r = read_ranking(path)
    loss = {x["unit"]: x["probe_loss"] for x in r["rows"]}
    assert r["method"] == "specialists" and order == r["order"] == sorted(loss, key=lambda u: (loss[u], u))
    assert r["suggested"] == specialists.choose(loss, 4) and all(np.isfinite(v) for v in loss.values())
    assert "probe loss" in (path.with_suffix(".txt")).read_text()
    cache = Path(spec.cache_dir())
    assert len(list(cache.glob("spec-*"))) == 2 and not list(cache.glob("expert-*"))
    tracker = tracker_for(spec)
    runs = tracker.find_runs({"rtl.kind": "ranking", "rtl.target": "tgt"})
    assert len(runs) == 1 and set(runs[0].data.metrics) == {"probe_loss.a", "probe_loss.b"}
    assert not tracker.find_runs({"rtl.kind": "expert", "rtl.target": "tgt"})
    mtime = path.stat().st_mtime
    assert target_order(spec, "tgt", ["a", "b"]) == order and path.stat().st_mtime == mtime  # read, not redone
    specs = sorted(cache.glob("spec-*"))
    plan = pretrain_plan(spec, TrialParams(number=0, enqueued=IMPORTANCE_TRIAL, mask=order, k=2, temperature=1.0,
                                           lr=0.01))

    def probed_again(*_a, **_k):
        raise AssertionError("a specialist was probed on the target a second time")

    def agreed_again(*_a, **_k):
        raise AssertionError("the label agreement was run a second time")

    monkeypatch.setattr(specialists, "probe_loss", probed_again)
    import rtl.sweep.agreement as agreement
    monkeypatch.setattr(agreement, "expand", agreed_again)  # the ranking's choice is read back
    entry, _, _, _ = best_candidate(spec, plan, str(tmp_path / "targets" / "tgt"), generalist(spec, ["a", "b"])[0])
    assert sorted(cache.glob("spec-*")) == specs  # the candidate used the ranking's specialists
    said = json.loads((entry / specialists.SCORES_FILE).read_text())
    assert said["probe_loss"] == loss and said["chosen"] == r["suggested"]  # and their losses
    assert specialists.scores(spec, ["a"], str(tmp_path / "targets" / "tgt"), 0, 0.5) == {"a": loss["a"]}
    with pytest.raises(AssertionError, match="second time"):  # another seed: not this ranking's losses
        specialists.scores(spec, ["a"], str(tmp_path / "targets" / "tgt"), 1, 0.5)


def test_a_study_pointed_at_a_specialists_ranking_falls_back_to_the_corpus(tmp_path: Path, capsys) -> None:
    """A study's `rankings:` may point at a sweep's rankings/; one by specialists has no importance mass or
    per-source verdicts, so the study's similarity does not read zeros from it: it says so and falls back."""
    from types import SimpleNamespace

    from rtl.artifacts.ranking import write_ranking
    from rtl.study.results import _ranking_similarity

    r = {"version": 1, "method": "specialists", "target": "tgt", "corpus_version": "v1", "by": "datasets",
         "rows": [{"rank": 1, "unit": "a", "probe_loss": 0.2, "chosen": True}], "order": ["a"], "suggested": ["a"]}
    write_ranking(tmp_path / "tgt.json", r)
    spec = SimpleNamespace(ranking_path=lambda tg: str(tmp_path / f"{tg}.json"))
    assert _ranking_similarity(spec, "tgt", {"version": "v1", "datasets": {}}, {"rows": {}}) is None
    assert "by specialists" in capsys.readouterr().out


def test_the_ranking_is_by_specialists_when_the_candidates_build_them(tmp_path: Path) -> None:
    """`ranking.method: auto` (default): the specialists order the ranked space when the importance trial's
    candidates build them anyway; otherwise the experts (N/20 generalists per seed, not N/4)."""
    from rtl.sweep.spec import ranking_method

    def method(sources: dict) -> str:
        return ranking_method(load_spec(write_spec(tmp_path, name="m", search={"sources": sources})).search.sources)

    assert method({"space": "ranked"}) == "specialists"  # the default candidates: the specialists' pick
    assert method({"space": "ranked", "importance_candidates": None}) == "experts"
    assert method({"space": "ranked", "importance_trial": None}) == "experts"  # no importance trial: none built
    assert method({"space": "ranked", "importance_candidates": {"variants": [{"drop": [1]}], "own": True}}) == "experts"
    assert method({"space": "ranked", "ranking": {"method": "experts"}}) == "experts"
    assert method({"space": "ranked", "importance_candidates": None, "ranking": {"method": "specialists"}}) == "specialists"


def test_a_confirm_seed_pretrains_the_chosen_sources_again_without_new_specialists(tmp_path: Path) -> None:
    """The specialists are built on the sweep's first seed: the importance trial confirmed on another seed
    pretrains the sources they chose with that seed (the seed noise of the configuration the report names)
    and builds no second set of specialists."""
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep import specialists
    from rtl.sweep.candidates import best_candidate
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import pretrain_plan

    spec = _spec(tmp_path, [{"specialists": True}], own=False, specialist_fraction=0.5)
    spec = spec.model_copy(update={"seeds": [0, 1]})
    target = str(tmp_path / "targets" / "tgt")
    gen, _ = generalist(spec, ["a", "b"])
    runs = {}
    for seed in (0, 1):
        plan = pretrain_plan(spec, TrialParams(number=0, seed=seed, enqueued=IMPORTANCE_TRIAL, mask=["a", "b"], k=2,
                                               temperature=1.0, lr=0.01))
        entry, key, _, cands = best_candidate(spec, plan, target, gen)
        runs[seed] = (entry, key, cands, json.loads((entry / specialists.SCORES_FILE).read_text()))
    cache = Path(spec.cache_dir())
    built = [json.loads((d / "specialist.json").read_text())["seed"] for d in cache.glob("spec-*")]
    assert built == [0, 0]                                    # one set of specialists, on the first seed
    assert runs[1][3] == runs[0][3]                           # the same losses chose the same sources
    assert [c.seed for c in runs[1][2]] == [runs[0][2][0].seed + 1]  # pretrained again, with the confirm's seed
    assert runs[1][1] != runs[0][1] and (cache / runs[1][1] / "ckpt").is_dir()


def test_a_sweep_started_under_the_old_default_resumes_with_its_own_specialists(tmp_path: Path) -> None:
    """The default fraction changed (0.25 -> 0.2, session 18): a sweep whose spec.json was written under 0.25
    reads 0.25 back, so `rtl sweep resume` finds the specialists it built instead of building (and paying) a new
    set under other keys; a new sweep gets 0.2."""
    from rtl.sweep.spec import load_resolved, save_resolved
    from rtl.sweep.specialists import fraction_of, specialist_key

    spec = _spec(tmp_path, [{"specialists": True}], own=False)
    assert fraction_of(spec) == 0.2
    old = spec.model_copy(deep=True)
    old.search.sources.importance_candidates.specialist_fraction = 0.25
    (tmp_path / "results").mkdir()
    save_resolved(old, str(tmp_path / "results" / "spec.json"))
    back = load_resolved(str(tmp_path / "results"))
    assert fraction_of(back) == 0.25
    assert specialist_key(back, "a", 0, fraction_of(back)) == specialist_key(old, "a", 0, 0.25)
