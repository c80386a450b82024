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
        if t.state.name == "PRUNED":  # stopped by ASHA before the last fine-tuning epoch
            assert max(t.intermediate_values) < spec.budget.finetune_epochs
        else:
            assert t.user_attrs["rtl.test_error"] is not None
    row = sweep_status(results)[0]
    assert row["done"] + row["pruned"] == 4 and row["best_val"] is not None
    md = Path(write_report(results, log_mlflow=False)).read_text()
    assert "| scratch |" in md and "| uniform |" in md and "best (search)" in md
