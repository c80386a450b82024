"""The ranked search end to end on local Ray: the sweep ranks the target's sources once (experts cached,
one MLflow ranking run), enqueues the controls and the top-k trials once, continues the generalist on
each subset in rungs with equal images whatever the subset's size, tells stopped subsets PRUNED with
their rung values, and a second run (resume) ranks and enqueues nothing again."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sweep_helpers import write_spec

from rtl.sweep.spec import load_spec

N = 8  # controls: scratch, generalist, uniform; enqueued: the importance trial, its pretraining fine-tuned at
# the high and low ends of the lr range, top-1; 1 from the sampler


def test_ranked_sweep_rungs_and_resume(tmp_path: Path, ray_session) -> None:
    from rtl.report.sweep import write_report
    from rtl.sweep.runner import run_sweep
    from rtl.sweep.status import target_trials
    from rtl.sweep.trial import tracker_for

    spec = load_spec(write_spec(
        tmp_path, name="rk", trials=N, scheduler={"name": "rungs", "reduction_factor": 3},
        search={"sources": {"space": "ranked", "ranking": {"method": "experts", "seeds": [0], "finetune_epochs": 1},
                            "importance_candidates": {"variants": [{"top": 1}, {"specialists": True}], "cut": 0.5,
                                                      "own": True}, "importance_init": True},
                "temperature": {"low": 0.5, "high": 4.0, "allow_off": True}, "lr": {"low": 0.01, "high": 0.1},
                "freeze_depth": {"low": 0, "high": 1}},
        budget={"pretrain_epochs": 2, "finetune_epochs": 2, "trials_per_target": N, "max_concurrent": 1,
                "batch_size": 8, "subset_fraction": 0.5, "rungs": [1 / 3, 1.0]},
        controls={"scratch": True, "generalist": True, "uniform": True, "importance": False, "imagenet": False}))
    results = run_sweep(spec)

    ranking = Path(results) / "rankings" / "tgt.json"
    order = json.loads(ranking.read_text())["order"]
    assert sorted(order) == ["a", "b"]
    tracker = tracker_for(spec)
    assert len(tracker.find_runs({"rtl.kind": "ranking", "rtl.target": "tgt"})) == 1
    assert len(tracker.find_runs({"rtl.kind": "expert", "rtl.target": "tgt"})) == 2

    trials = target_trials(results, "tgt")
    assert len(trials) == N and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    ctl = {t.user_attrs.get("rtl.control") for t in trials} - {None}
    assert ctl == {"scratch", "generalist", "uniform"}
    for t in trials:
        if t.user_attrs.get("rtl.control"):
            assert t.state.name == "COMPLETE"  # controls are never stopped
        if t.state.name == "PRUNED":  # stopped at a pretraining rung: its rung values reach Optuna
            assert t.user_attrs.get("rtl.rung") == 1 and set(t.intermediate_values) == {1}
    top1 = [t for t in trials if t.user_attrs.get("rtl.enqueued") == "top-1"]
    assert len(top1) == 1 and top1[0].params["k"] == 1 and top1[0].user_attrs["rtl.mask"] == order[0]
    gen = [t for t in trials if t.user_attrs.get("rtl.control") == "generalist"][0]
    assert gen.user_attrs["rtl.mask"] == "generalist"
    # the importance trial (Ngiam et al. 2018): every source, weighted at T = 1 by the generalist,
    # pretrained from scratch for the generalist's full budget -- not a continuation of it
    imp = [t for t in trials if t.user_attrs.get("rtl.enqueued") == "top-all-imp"]
    assert len(imp) == 1 and imp[0].params["k"] == 2 and imp[0].params["temperature"] == 1.0
    assert sorted(imp[0].user_attrs["rtl.mask"].split(",")) == ["a", "b"]
    assert imp[0].state.name == "COMPLETE"  # paid before its first rung report: never stopped
    assert imp[0].params["pretrain"] == "importance" and top1[0].params["pretrain"] == "continue"
    # importance_init: its pretraining fine-tuned at lr 0.1 and 0.01 (search.lr's ends) -- the same cache entry
    lr_trials = {t.user_attrs["rtl.enqueued"]: t for t in trials
                 if t.user_attrs.get("rtl.enqueued", "").startswith("top-all-imp-lr-")}
    assert sorted(lr_trials) == ["top-all-imp-lr-high", "top-all-imp-lr-low"]
    assert [lr_trials[k].params["lr"] for k in sorted(lr_trials)] == [0.1, 0.01]
    keys = {tracker.find_runs({"rtl.kind": "trial", "rtl.trial_id": t.user_attrs["rtl.tune_trial_id"]})[0]
            .data.tags["rtl.cache_key"] for t in [imp[0], *lr_trials.values()]}
    assert len(keys) == 1 and all(t.state.name == "COMPLETE" for t in lr_trials.values())
    eff = imp[0].user_attrs["rtl.effective_sources"].split(",")  # where 90 % of its images came from
    assert eff and set(eff) <= {"a", "b"}
    # it pretrained the best of three candidates (both sources seed 0, the ranking's first seed 1, the sources
    # the specialists chose seed 2), compared after epoch 1 of 2
    assert imp[0].user_attrs["rtl.candidate"].endswith("of 3, picked after epoch 1 of 2)")
    said = json.loads(imp[0].user_attrs["rtl.specialists"])  # one from-scratch specialist per source
    assert said["chosen"] and set(said["chosen"]) <= {"a", "b"} and set(said["probe_loss"]) == {"a", "b"}
    assert len(list(Path(spec.cache_dir()).glob("spec-*"))) == 2
    imp_run = tracker.find_runs({"rtl.kind": "trial", "rtl.trial_id": imp[0].user_attrs["rtl.tune_trial_id"]})
    assert len(imp_run) == 1 and json.loads(imp_run[0].data.tags["rtl.candidates"])[1]["sources"] == 1
    assert {m.step for m in tracker.client.get_metric_history(imp_run[0].info.run_id, "candidate_probe_error")} == {0, 1, 2}
    metas = {d.name: json.loads((d / "ckpt" / "meta.json").read_text()) for d in Path(spec.cache_dir()).iterdir()
             if (d / "ckpt" / "meta.json").exists()}
    weighted = [m for k, m in metas.items() if not k.startswith(("rung-", "cut-"))
                and m["config"].get("strategy") == "weighted"]
    gen_meta = [m for m in metas.values() if m["config"].get("strategy") == "subset"
                and sorted(m["config"].get("datasets") or []) == ["a", "b"] and len(m["history"]) == 2
                and not m["config"].get("init_checkpoint")]
    assert len(weighted) == 1 and gen_meta, sorted(metas)  # only the picked candidate was pretrained to the end
    assert sorted(len(m["history"]) for k, m in metas.items() if k.startswith("cut-")) == [1, 1, 1]
    assert not weighted[0]["config"].get("init_checkpoint")  # from scratch
    assert sum(h["images"] for h in weighted[0]["history"]) == sum(h["images"] for h in gen_meta[0]["history"])

    # equal compute per subset: every rung checkpoint of one rung consumed the same images, whatever its mask
    cache = Path(spec.cache_dir())
    by_rung: dict[int, set[int]] = {}
    for d in cache.glob("rung-*"):
        meta = json.loads((d / "ckpt" / "meta.json").read_text())
        images = sum(h["images"] for h in meta["history"])  # this rung's own images (it continues the previous)
        rung = 2 if "/rung-" in str(meta["config"].get("init_checkpoint")) else 1
        by_rung.setdefault(rung, set()).add(images)
    assert by_rung and all(len(v) == 1 for v in by_rung.values()), by_rung

    mtime = os.path.getmtime(ranking)
    entries = sorted(p.name for p in cache.iterdir())
    run_sweep(spec)  # resume of a finished sweep: nothing ranked, enqueued, pretrained or run again
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert os.path.getmtime(ranking) == mtime
    again = target_trials(results, "tgt")
    assert len(again) == N and [t.number for t in again] == [t.number for t in trials]
    text = Path(write_report(results, log_mlflow=False)).read_text()
    assert "| trial |" in text and "**Specialists**" in text
