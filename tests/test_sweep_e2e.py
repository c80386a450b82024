"""A 4-trial sweep end to end on local Ray: exactly 4 MLflow trial runs with the listed params, the Optuna
storage holds 4 finished trials (stopped ones PRUNED), status and report read them back."""

from __future__ import annotations

from pathlib import Path

from sweep_helpers import write_spec

from rtl.sweep.spec import load_spec

PARAMS = {"mask", "mask_bits", "temperature", "lr", "freeze_depth", "regularizer", "control", "seed"}


def test_tiny_sweep_end_to_end(tmp_path: Path, ray_session) -> None:
    from rtl.report.sweep import write_report
    from rtl.sweep.runner import run_sweep
    from rtl.sweep.status import sweep_status, target_trials
    from rtl.sweep.trial import tracker_for

    spec = load_spec(write_spec(tmp_path, trials=4, scheduler={"grace_period": 1, "reduction_factor": 4}))
    results = run_sweep(spec)

    runs = tracker_for(spec).trial_runs("tgt")
    assert len(runs) == 4
    assert len({r.data.tags["rtl.trial_id"] for r in runs}) == 4
    for r in runs:
        assert PARAMS <= set(r.data.params), r.data.params
        assert r.info.status == "FINISHED" and r.data.tags["rtl.state"] in ("complete", "pruned")
        assert "val_error" in r.data.metrics
    by_ctl = {r.data.params["control"]: r for r in runs}
    assert by_ctl["uniform"].data.params["mask_bits"] == "11" and by_ctl["scratch"].data.params["mask"] == "none"
    searched = [r for r in runs if r.data.params["control"] == "search"]
    assert all(r.data.params["mask_bits"] not in ("", "00") for r in searched)

    trials = target_trials(results, "tgt")
    assert len(trials) == 4 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    for t in trials:
        if t.user_attrs.get("rtl.control"):  # baselines always run their whole fine-tuning budget
            assert t.state.name == "COMPLETE", t.user_attrs
        if t.state.name == "PRUNED":  # stopped by ASHA before the last fine-tuning epoch
            assert max(t.intermediate_values) < spec.budget.finetune_epochs
        else:
            assert t.user_attrs["rtl.test_error"] is not None
    row = sweep_status(results)[0]
    assert row["done"] + row["pruned"] == 4 and row["best_val"] is not None
    md = Path(write_report(results, log_mlflow=False)).read_text()
    assert "| scratch |" in md and "| uniform |" in md and "best (search)" in md


def test_best_config_confirmed_over_seeds_and_not_rerun_on_resume(tmp_path: Path, ray_session) -> None:
    """Two seeds: the best searched configuration is re-run with seed 1 as one `rtl.kind=confirm` MLflow
    run (not an Optuna trial: the study still has `trials_per_target` trials), the report shows n=2 for
    it and for the control, and a resume does not run the confirm trial again."""
    from rtl.report.sweep import write_report
    from rtl.sweep.runner import resume_sweep, run_sweep
    from rtl.sweep.status import format_status, sweep_status, target_trials
    from rtl.sweep.trial import tracker_for

    spec = load_spec(write_spec(tmp_path, name="c", trials=3, seeds=[0, 1], scheduler={"name": "fifo"},
                                controls={"scratch": True, "uniform": False, "importance": False, "imagenet": False}))
    results = run_sweep(spec)
    tracker = tracker_for(spec)

    trials = target_trials(results, "tgt")
    assert len(trials) == 3 and len(tracker.trial_runs("tgt")) == 3  # 2 scratch (one per seed) + 1 searched
    best = next(t for t in trials if not t.user_attrs.get("rtl.control"))
    assert best.state.name == "COMPLETE"
    confirm = tracker.find_runs({"rtl.kind": "confirm", "rtl.target": "tgt"})
    assert len(confirm) == 1
    run = confirm[0]
    assert run.info.status == "FINISHED" and run.data.params["seed"] == "1"
    assert run.data.tags["rtl.optuna_number"] == str(best.number)
    best_run = next(r for r in tracker.trial_runs("tgt") if r.data.tags["rtl.trial_id"] == best.user_attrs[
        "rtl.tune_trial_id"])
    for k in ("mask", "mask_bits", "temperature", "lr", "freeze_depth", "regularizer"):
        assert run.data.params[k] == best_run.data.params[k], k  # the same configuration, another seed
    assert "final_test_error" in run.data.metrics

    row = sweep_status(results)[0]
    assert row["done"] == 3 and row["confirm"] == {"TERMINATED": 1}
    assert "confirm seeds: terminated 1" in format_status([row])

    md = Path(write_report(results, log_mlflow=False)).read_text()
    best_row = next(line for line in md.splitlines() if line.startswith("| best (search) |"))
    scratch_row = next(line for line in md.splitlines() if line.startswith("| scratch |"))
    assert best_row.count("(n=2)") == 2 and scratch_row.count("(n=2)") == 2, md
    assert "vs scratch" in md

    resume_sweep(results)
    assert len(target_trials(results, "tgt")) == 3
    again = tracker.find_runs({"rtl.kind": "confirm", "rtl.target": "tgt"})
    assert [r.info.run_id for r in again] == [run.info.run_id]
    assert len(tracker.client.get_metric_history(run.info.run_id, "final_val_error")) == 1  # not re-run
