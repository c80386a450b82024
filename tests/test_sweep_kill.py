"""Resume after the whole sweep is killed (issue: finished trials vanished from Optuna, re-enqueued ones
never ran). The driver, raylet, GCS and workers are one process group: SIGKILL it twice at two points
(during a pretraining / a fine-tuning / right after a trial was asked), resume to the end, then the study
holds exactly the budget, MLflow agrees with Optuna, no finished trial ran twice and the report lists
every trial. The kill points are polled states, not fixed sleeps, plus a small extra delay per case:
the window that lost trials is timing-dependent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweep_helpers import write_spec

from rtl.sweep.spec import load_spec

N = 4  # 2 controls (scratch, uniform) + 2 searched


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}


def _trials(results_dir: str) -> list:
    from rtl.sweep.search import open_study
    from rtl.sweep.spec import load_resolved

    try:
        spec = load_resolved(results_dir)
        return open_study(spec.optuna_url(), f"{spec.name}/tgt").get_trials(deepcopy=False)
    except Exception:  # spec / storage not created yet
        return []


def _pretraining(ws: Path, results_dir: str, n0: int) -> bool:
    tmp = ws / "cache" / "tmp"
    return tmp.is_dir() and any(tmp.iterdir())


def _finetuning(ws: Path, results_dir: str, n0: int) -> bool:
    return any(t.state.name == "RUNNING" and t.intermediate_values for t in _trials(results_dir))


def _new_trial(ws: Path, results_dir: str, n0: int) -> bool:
    return len(_trials(results_dir)) > n0


def _complete(ws: Path, results_dir: str, n0: int) -> bool:
    return any(t.state.name == "COMPLETE" for t in _trials(results_dir))


def _run_until(cmd: list[str], ws: Path, results_dir: str, when, delay: float, log: Path) -> bool:
    """Start `cmd` in its own session; SIGKILL the whole session once `when(...)` holds (+ delay).
    Returns False if the command finished before the kill point."""
    n0 = len(_trials(results_dir)) if os.path.exists(os.path.join(results_dir, "spec.json")) else 0
    with open(log, "a") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    deadline = time.time() + 600
    try:
        while not when(ws, results_dir, n0):
            if p.poll() is not None:
                return False
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        time.sleep(delay)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # driver, raylet, GCS, workers: a lost machine
        except ProcessLookupError:
            pass
        p.wait()
    return True


RANKED = {"search": {"sources": {"space": "ranked", "ranking": {"seeds": [0], "finetune_epochs": 1}},
                     "temperature": {"low": 0.5, "high": 4.0, "allow_off": True}, "lr": {"low": 0.01, "high": 0.1},
                     "freeze_depth": {"low": 0, "high": 1}},
          "scheduler": {"name": "rungs", "reduction_factor": 3},
          "controls": {"scratch": True, "generalist": True, "uniform": True, "importance": False, "imagenet": False}}


@pytest.mark.parametrize("first,second,space", [
    ((_pretraining, 0.0), (_finetuning, 0.0), "bits"),
    ((_complete, 0.5), (_new_trial, 0.2), "ranked"),
], ids=["bits-pretrain-then-finetune", "ranked-after-complete-then-after-ask"])
def test_resume_after_two_kills_of_the_whole_sweep(tmp_path: Path, first, second, space: str) -> None:
    from rtl.report.sweep import write_report
    from rtl.sweep.status import sweep_status
    from rtl.sweep.trial import tracker_for

    n = N if space == "bits" else N + 1  # ranked: scratch, generalist, all sources, importance trial, one sampled
    spec_path = write_spec(tmp_path, name="k", trials=n, budget={
        "pretrain_epochs": 1, "finetune_epochs": 2, "trials_per_target": n, "max_concurrent": 1, "batch_size": 8,
        "subset_fraction": 0.5, "rungs": [1 / 3, 1.0]}, **(RANKED if space == "ranked" else {}))
    spec = load_spec(spec_path)
    rd, log = spec.results_dir, tmp_path / "run.log"
    rtl = [sys.executable, "-m", "rtl.cli", "sweep"]
    _run_until(rtl + ["run", str(spec_path)], tmp_path, rd, *first, log)
    finished_before = {t.user_attrs.get("rtl.tune_trial_id") for t in _trials(rd) if t.state.name == "COMPLETE"}
    _run_until(rtl + ["resume", rd], tmp_path, rd, *second, log)
    r = subprocess.run(rtl + ["resume", rd], capture_output=True, text=True, env=_env(), timeout=400,
                       start_new_session=True)
    assert r.returncode == 0, log.read_text()[-2000:] + r.stdout[-3000:] + r.stderr[-2000:]

    from rtl.sweep.search import counted

    trials = [t for t in _trials(rd) if counted(t)]
    states = [t.state.name for t in trials]
    assert sorted(states) == sorted(s for s in states if s in ("COMPLETE", "PRUNED")), states  # none RUNNING/WAITING
    assert len(trials) == n, [(t.number, t.state.name, t.user_attrs.get("rtl.enqueued"), t.user_attrs.get("rtl.control"),
                               t.user_attrs.get("rtl.tune_trial_id"), t.params) for t in _trials(rd)]
    assert not [t for t in _trials(rd) if t.state.name in ("RUNNING", "WAITING")]
    controls = sorted(t.user_attrs.get("rtl.control", "") for t in trials)
    assert controls.count("scratch") == 1 and controls.count("uniform") == 1
    if space == "ranked":  # controls and enqueued ranking trials exactly once, whatever the kills
        assert controls.count("generalist") == 1
        assert sum(t.user_attrs.get("rtl.enqueued") == "top-all-imp" for t in trials) == 1

    tracker = tracker_for(spec)
    runs = [x for x in tracker.trial_runs("tgt") if x.data.tags.get("rtl.orphaned") != "1"]
    by_id = {x.data.tags["rtl.trial_id"]: x for x in runs}
    assert len(by_id) == len(runs) == n  # one MLflow run per trial
    for t in trials:  # the same final state in MLflow as in Optuna
        run = by_id[t.user_attrs["rtl.tune_trial_id"]]
        assert run.data.tags.get("rtl.state") == t.state.name.lower() and run.info.status == "FINISHED"
        assert len(tracker.client.get_metric_history(run.info.run_id, "final_val_error")) <= 1
    for tid in finished_before:  # a trial finished before a kill never fine-tuned again
        assert by_id[tid].data.tags.get("rtl.finetune_starts") == "1"
    row = sweep_status(rd)[0]
    assert row["disagreement"] is None and row["done"] + row["pruned"] == n and row["queued"] == 0
    report = Path(write_report(rd, log_mlflow=False)).read_text()
    for t in trials:
        assert f"| {t.number} | " in report
