"""The importance trial as the best of several candidates (rtl.sweep.candidates): every candidate is
pretrained only up to the cut, only the best by probe is pretrained to the end, and that end continues the
same run (the cut's epochs are not paid again); a second call (resume) builds nothing; the compute counter
does not count a cut twice. No Ray: pretraining runs in-process (train_workers 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweep_helpers import write_spec

from rtl.errors import ConfigError
from rtl.sweep.spec import load_spec, spec_from_dict


def _spec(tmp_path: Path, variants: list[dict]):
    return load_spec(write_spec(
        tmp_path, name="cand",
        search={"sources": {"space": "ranked", "importance_candidates": {"variants": variants, "cut": 0.5, "own": True}},
                "temperature": {"low": 0.5, "high": 4.0, "allow_off": True}, "lr": {"low": 0.01, "high": 0.1},
                "freeze_depth": {"low": 0, "high": 1}},
        budget={"pretrain_epochs": 2, "finetune_epochs": 1, "trials_per_target": 2, "max_concurrent": 1,
                "batch_size": 8}))


def _history(entry: Path) -> list[dict]:
    return json.loads((entry / "ckpt" / "meta.json").read_text())["history"]


def test_best_candidate_cuts_then_continues_the_winner(tmp_path: Path) -> None:
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.candidates import best_candidate, prefix_of
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import pretrain_plan

    spec = _spec(tmp_path, [{"top": 1}])
    gen, _ = generalist(spec, ["a", "b"])
    plan = pretrain_plan(spec, TrialParams(number=3, enqueued=IMPORTANCE_TRIAL, mask=["a", "b"], k=2,
                                           temperature=1.0, lr=0.01))
    assert not plan.continue_generalist and plan.strategy == "weighted"
    target = str(tmp_path / "targets" / "tgt")
    entry, key, best, cands = best_candidate(spec, plan, target, gen)

    # its own (both sources) first, then the ranking's first source alone; seeds count up
    assert [(c.sources, c.temperature, c.seed) for c in cands] == [(2, 1.0, 0), (1, 1.0, 1)]
    assert all(0.0 <= c.probe_error <= 1.0 for c in cands)
    assert best == min(range(2), key=lambda i: (cands[i].probe_error, i))
    cache = Path(spec.cache_dir())
    cuts = sorted(cache.glob("cut-*"))
    assert len(cuts) == 2 and all(len(_history(c)) == 1 for c in cuts)  # each candidate: the first epoch only
    masks = sorted(json.loads((c / "cut.json").read_text())["mask"] for c in cuts)
    assert masks == [["a"], ["a", "b"]] and sorted(_history(c)[0]["images"] for c in cuts) == [32, 32]  # equal steps
    assert entry.name == key and prefix_of(cuts[0]) != prefix_of(cuts[1])
    winner_cut = [c for c in cuts if prefix_of(c) == key]
    assert len(winner_cut) == 1
    full = _history(entry)
    # the winner continued its cut: epoch 0 of its history IS the cut's (same loss), not a second run
    assert len(full) == 2 and full[0]["train_loss"] == _history(winner_cut[0])[0]["train_loss"]
    loser_cut = [c for c in cuts if c != winner_cut[0]][0]
    assert not (cache / prefix_of(loser_cut)).exists()  # the loser was never pretrained to the end
    assert json.loads((entry / "weights.json").read_text()) == json.loads((winner_cut[0] / "weights.json").read_text())

    before = sorted(p.name for p in cache.iterdir())
    again = best_candidate(spec, plan, target, gen)  # resume: the same pick, nothing built
    assert again[1] == key and again[2] == best and sorted(p.name for p in cache.iterdir()) == before


def test_a_cut_inside_an_epoch_splits_the_schedule_not_the_budget(tmp_path: Path) -> None:
    """cut 0.25 of 2 epochs: each candidate runs the first of 4 half-size epochs; the winner's full run has
    the same images and the same per-step learning-rate schedule as an unsplit one (warm-up over the same
    steps, peak at the same step, cosine to 0 at the last), and continues its cut."""
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.candidates import best_candidate, epochs_of, prefix_of
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import pretrain_plan

    d = _spec(tmp_path, [{"top": 1}]).model_dump()
    d["search"]["sources"]["importance_candidates"]["cut"] = 0.25
    spec = spec_from_dict(d, "quarter")
    assert epochs_of(spec) == 4
    gen, _ = generalist(spec, ["a", "b"])
    plan = pretrain_plan(spec, TrialParams(number=0, enqueued=IMPORTANCE_TRIAL, mask=["a", "b"], k=2,
                                           temperature=1.0, lr=0.01))
    entry, key, _, _ = best_candidate(spec, plan, str(tmp_path / "targets" / "tgt"), gen)
    cuts = sorted(Path(spec.cache_dir()).glob("cut-*"))
    assert len(cuts) == 2 and all([h["images"] for h in _history(c)] == [16] for c in cuts)  # a quarter each
    full = _history(entry)
    unsplit = _history(gen.parent)  # the generalist: the same schedule unsplit (2 epochs of 32)
    assert [h["images"] for h in full] == [16] * 4 and sum(h["images"] for h in unsplit) == 64
    assert full[1]["lr"] == pytest.approx(unsplit[0]["lr"])  # warm-up ends at the same step
    assert full[-1]["lr"] == pytest.approx(unsplit[-1]["lr"], abs=1e-12)
    winner_cut = [c for c in cuts if prefix_of(c) == key]
    assert len(winner_cut) == 1 and full[0]["train_loss"] == _history(winner_cut[0])[0]["train_loss"]


def test_length_shortens_every_epoch_of_the_importance_pretraining(tmp_path: Path) -> None:
    """`length: 0.5`: the importance trial's pretraining has the same epochs as the generalist, each with half
    its images, under its own cache key (a full-length entry is never reused for it); above 1 is refused."""
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.candidates import best_candidate
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import pretrain_plan

    d = _spec(tmp_path, [{"top": 1}]).model_dump()
    d["search"]["sources"]["importance_candidates"] |= {"own": False, "length": 0.5}
    spec = spec_from_dict(d, "half")
    gen, _ = generalist(spec, ["a", "b"])
    plan = pretrain_plan(spec, TrialParams(number=0, enqueued=IMPORTANCE_TRIAL, mask=["a", "b"], k=2,
                                           temperature=1.0, lr=0.01))
    entry, key, _, cands = best_candidate(spec, plan, str(tmp_path / "targets" / "tgt"), gen)
    full, generalist_images = _history(entry), [h["images"] for h in _history(gen.parent)]
    assert len(cands) == 1 and len(full) == len(generalist_images) == 2
    assert [h["images"] for h in full] == [g // 2 for g in generalist_images]  # 16 of 32 per epoch
    d["search"]["sources"]["importance_candidates"]["length"] = 1.0
    entry1, key1, _, _ = best_candidate(spec_from_dict(d, "whole"), plan, str(tmp_path / "targets" / "tgt"), gen)
    assert key1 != key and [h["images"] for h in _history(entry1)] == generalist_images
    d["search"]["sources"]["importance_candidates"]["length"] = 1.5
    with pytest.raises(ConfigError, match="length"):
        spec_from_dict(d, "x")


def test_each_target_gets_its_own_candidates(tmp_path: Path) -> None:
    """Importance weights are the target's: two targets never share a cut (a cut keyed without the target
    once gave every target of a sweep the first target's weights)."""
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.candidates import best_candidate
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import pretrain_plan

    spec = load_spec(write_spec(
        tmp_path, name="cand2", targets=("tgt", "other"),
        search={"sources": {"space": "ranked", "importance_candidates": {"variants": [{"top": 1}], "cut": 0.5,
                                                                             "own": True}},
                "temperature": {"low": 0.5, "high": 4.0, "allow_off": True}, "lr": {"low": 0.01, "high": 0.1},
                "freeze_depth": {"low": 0, "high": 1}},
        budget={"pretrain_epochs": 2, "finetune_epochs": 1, "trials_per_target": 2, "max_concurrent": 1,
                "batch_size": 8}))
    gen, _ = generalist(spec, ["a", "b"])
    plan = pretrain_plan(spec, TrialParams(number=0, enqueued=IMPORTANCE_TRIAL, mask=["a", "b"], k=2,
                                           temperature=1.0, lr=0.01))
    for t in ("tgt", "other"):
        best_candidate(spec, plan, str(tmp_path / "targets" / t), gen)
    assert len(list(Path(spec.cache_dir()).glob("cut-*"))) == 4


def test_a_drop_candidate_leaves_out_the_targets_own_mass_leader(tmp_path: Path) -> None:
    """End to end: the leader is read from the trial's own weights on this target, and its cut is trained
    on the mask without it."""
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.candidates import best_candidate, mass_leaders
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import _importance, pretrain_plan

    spec = _spec(tmp_path, [{"drop": [1]}])
    gen, _ = generalist(spec, ["a", "b"])
    plan = pretrain_plan(spec, TrialParams(number=0, enqueued=IMPORTANCE_TRIAL, mask=["a", "b"], k=2,
                                           temperature=1.0, lr=0.01))
    target = str(tmp_path / "targets" / "tgt")
    leader = mass_leaders(_importance(spec, gen, target, ["a", "b"], 1.0), "datasets", ["a", "b"])[0]
    _, _, _, cands = best_candidate(spec, plan, target, gen)
    assert [c.sources for c in cands] == [2, 1]
    masks = [json.loads((c / "cut.json").read_text())["mask"] for c in Path(spec.cache_dir()).glob("cut-*")]
    assert sorted(masks, key=len) == [sorted({"a", "b"} - {leader}), ["a", "b"]]


def test_compute_counter_skips_a_cut_inside_its_full_run(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from ranked_search import images_consumed

    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.candidates import best_candidate
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import pretrain_plan

    spec = _spec(tmp_path, [{"temperature": 2.0}])
    gen, _ = generalist(spec, ["a", "b"])
    plan = pretrain_plan(spec, TrialParams(number=0, enqueued=IMPORTANCE_TRIAL, mask=["a", "b"], k=2,
                                           temperature=1.0, lr=0.01))
    entry, _, _, cands = best_candidate(spec, plan, str(tmp_path / "targets" / "tgt"), gen, complete_all=True)
    assert all(c.full_probe_error is not None for c in cands)  # benchmarks: every candidate to the end
    per_run = sum(h["images"] for h in _history(entry))
    gen_images = sum(h["images"] for h in _history(gen.parent))
    # generalist + two full weighted runs; each cut is the first half of one of them, counted once
    assert images_consumed(spec.cache_dir()) == gen_images + 2 * per_run


def test_candidate_list_follows_the_ranking(tmp_path: Path) -> None:
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.candidates import candidate_list
    from rtl.sweep.trial import pretrain_plan

    spec = _spec(tmp_path, [{"top": 1}, {"temperature": 2.0}, {"top": 5, "temperature": 0.5}])
    plan = pretrain_plan(spec, TrialParams(number=0, seed=7, enqueued=IMPORTANCE_TRIAL, mask=["b", "a"], k=2,
                                           temperature=1.0, lr=0.01))
    # the mask is in ranking order (b first): top 1 is b; a top larger than the mask is the whole mask
    assert candidate_list(spec, plan) == [(["b", "a"], 1.0, 7), (["b"], 1.0, 8), (["b", "a"], 2.0, 9),
                                          (["b", "a"], 0.5, 10)]


def test_drop_variants_leave_out_the_mass_leaders(tmp_path: Path) -> None:
    """`drop: [i]` removes the i-th unit by the trial's own importance mass (not by ranking order): a
    look-alike that takes most of the weighted batches can be left out; a variant left empty is skipped."""
    import numpy as np

    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.select.importance import write_weights
    from rtl.sweep.candidates import candidate_list, mass_leaders, needs_leaders
    from rtl.sweep.trial import pretrain_plan

    table = [{"id": i, "dataset": d, "label": lab, "domain": []}
             for i, (d, lab) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("c", "x")])]
    mass = np.array([0.1, 0.1, 0.7, 0.1])  # b leads (0.7), then a (0.2), then c (0.1)
    w = write_weights(tmp_path / "w.json", corpus_version="v", temperature=1.0, class_table=table,
                      weights=mass, mass=mass)
    leaders = mass_leaders(w.read_bytes(), "datasets", ["c", "a", "b"])
    assert leaders == ["b", "a", "c"]
    spec = _spec(tmp_path, [{"drop": 1}, {"drop": [2], "temperature": 2.0}, {"drop": [1, 2]}, {"top": 1, "drop": [3]}])
    assert needs_leaders(spec) and not needs_leaders(_spec(tmp_path / "x", [{"top": 1}]))
    plan = pretrain_plan(spec, TrialParams(number=0, seed=3, enqueued=IMPORTANCE_TRIAL, mask=["c", "a", "b"], k=3,
                                           temperature=1.0, lr=0.01))
    # own; without b; without a at T 2; without b and a; top 1 (c) without c -> empty, skipped
    assert candidate_list(spec, plan, leaders) == [(["c", "a", "b"], 1.0, 3), (["c", "a"], 1.0, 4),
                                                   (["c", "b"], 2.0, 5), (["c"], 1.0, 6)]
    with pytest.raises(ValueError):
        candidate_list(spec, plan)  # the leaders must be known first


@pytest.mark.parametrize("drop", [[0], [1, 1], [], 0, True, "one"])
def test_drop_must_name_distinct_leaders(tmp_path: Path, drop: list[int]) -> None:
    with pytest.raises(ConfigError):
        _spec(tmp_path, [{"drop": drop}])


def test_kendall_tau_b_of_the_fidelity_benchmark() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from candidate_fidelity import kendall_tau_b

    assert kendall_tau_b([0.1, 0.2, 0.3], [0.2, 0.4, 0.5]) == 1.0  # the cut orders them as the end does
    assert kendall_tau_b([0.1, 0.2, 0.3], [0.5, 0.4, 0.2]) == -1.0
    assert kendall_tau_b([0.2, 0.2, 0.2], [0.1, 0.2, 0.3]) is None  # a constant cut says nothing
    assert abs(kendall_tau_b([0.1, 0.1, 0.3], [0.1, 0.2, 0.3]) - 2 / 6 ** 0.5) < 1e-12  # tau-b with a tie


def test_one_pretraining_epoch_is_split_for_the_cut(tmp_path: Path) -> None:
    """A schedule of one epoch still has a cut before its end: the epoch runs as shorter ones."""
    from rtl.sweep.candidates import cut_epoch, epochs_of

    d = _spec(tmp_path, [{"temperature": 2.0}]).model_dump()
    d["budget"]["pretrain_epochs"] = 1
    spec = spec_from_dict(d, "x")
    assert (cut_epoch(spec), epochs_of(spec)) == (1, 2)
    d["search"]["sources"]["importance_candidates"]["cut"] = 0.25
    assert (cut_epoch(spec_from_dict(d, "x")), epochs_of(spec_from_dict(d, "x"))) == (1, 4)
    d["budget"]["pretrain_epochs"] = 2
    d["search"]["sources"]["importance_candidates"]["variants"] = [{"temperature": 0.0}]
    with pytest.raises(ConfigError, match="temperature"):
        spec_from_dict(d, "x")


def test_names_variants_keep_the_sources_with_the_targets_class_names(tmp_path: Path) -> None:
    """`names: 1` keeps the units whose classes hold every class name of the target (case, "-", "_" and
    spaces ignored); with `drop`, the leader is counted among those units; no match -> skipped."""
    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.sweep.candidates import candidate_list, name_shares, needs_names
    from rtl.sweep.trial import pretrain_plan

    manifest = {"classes": [{"dataset": d, "label": lab, "domain": [dom]} for d, lab, dom in [
        ("a", "OK", "film"), ("a", "Scratch-Line", "film"), ("b", "ok", "film"), ("b", "scratch_line", "film"),
        ("c", "ok", "pcb"), ("c", "short", "pcb"), ("d", "scratch line", "pcb")]]}
    shares = name_shares(manifest, ["ok", "scratch line"], "datasets")
    assert shares == {"a": 1.0, "b": 1.0, "c": 0.5, "d": 0.5}
    assert name_shares(manifest, ["ok", "scratch line"], "domains") == {"film": 1.0, "pcb": 1.0}
    spec = _spec(tmp_path, [{"names": 1.0}, {"names": 1.0, "drop": [1]}, {"names": 0.5, "top": 2},
                            {"drop": [1]}])
    assert needs_names(spec) and not needs_names(_spec(tmp_path / "x", [{"drop": [1]}]))
    plan = pretrain_plan(spec, TrialParams(number=0, seed=3, enqueued=IMPORTANCE_TRIAL, mask=["c", "a", "b", "d"],
                                           k=4, temperature=1.0, lr=0.01))
    leaders = ["c", "b", "a", "d"]  # c takes the most mass; among the name matches, b leads
    assert candidate_list(spec, plan, leaders, shares) == [
        (["c", "a", "b", "d"], 1.0, 3), (["a", "b"], 1.0, 4), (["a"], 1.0, 5), (["c", "a"], 1.0, 6),
        (["a", "b", "d"], 1.0, 7)]
    none = {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}  # no source shares the target's names: variants skipped
    assert candidate_list(spec, plan, leaders, none) == [(["c", "a", "b", "d"], 1.0, 3), (["a", "b", "d"], 1.0, 7)]
    with pytest.raises(ValueError):
        candidate_list(spec, plan, leaders)  # the shares must be known first
    with pytest.raises(ConfigError):
        _spec(tmp_path / "y", [{"names": 1.5}])


def test_a_variants_pick_is_reported_with_its_own_sources(tmp_path: Path) -> None:
    """A candidate whose units differ from the trial's mask records them in its full entry (`mask.json`):
    reports and the per-source effects name what the pick pretrained on, not "every source"."""
    from types import SimpleNamespace

    from rtl.artifacts.trial import IMPORTANCE_TRIAL, TrialParams
    from rtl.report.verdict import trial_mask
    from rtl.sweep.candidates import CUT_FILE, best_candidate, pretrained_mask
    from rtl.sweep.subset import generalist
    from rtl.sweep.trial import pretrain_plan
    from rtl.sweep.verdict import subset_name

    spec = _spec(tmp_path, [{"drop": [1]}])
    gen, _ = generalist(spec, ["a", "b"])
    plan = pretrain_plan(spec, TrialParams(number=0, enqueued=IMPORTANCE_TRIAL, mask=["a", "b"], k=2,
                                           temperature=1.0, lr=0.01))
    best_candidate(spec, plan, str(tmp_path / "targets" / "tgt"), gen, complete_all=True)
    cache = Path(spec.cache_dir())
    seen = {}
    for cut in cache.glob("cut-*"):
        c = json.loads((cut / CUT_FILE).read_text())
        seen[len(c["mask"])] = pretrained_mask(str(cache / c["full"] / "weights.json"))
        assert seen[len(c["mask"])] == ("" if len(c["mask"]) == 2 else ",".join(c["mask"]))
    assert sorted(seen) == [1, 2] and seen[1] in ("a", "b")
    assert pretrained_mask(None) == "" and pretrained_mask(str(tmp_path / "nowhere" / "weights.json")) == ""
    t = SimpleNamespace(params={"temperature": 1.0}, user_attrs={
        "rtl.enqueued": IMPORTANCE_TRIAL, "rtl.mask": "a,b", "rtl.candidate_mask": seen[1],
        "rtl.candidate": "1 source(s) at T=1"})
    assert subset_name(t).startswith(f"(1 source ({seen[1]}), the importance trial's pretraining")
    assert trial_mask(t) == [seen[1]]
