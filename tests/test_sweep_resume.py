"""Kill-and-resume: SIGKILL `rtl sweep run` mid-sweep, `rtl sweep resume`, then the trial count equals the
spec, MLflow has one run per trial id, and a trial finished before the kill is not run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sweep_helpers import write_spec

from rtl.sweep.spec import load_spec

N = 4


def _rtl(*args: str) -> list[str]:
    return [sys.executable, "-m", "rtl.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}


def test_kill_and_resume(tmp_path: Path) -> None:
    from rtl.sweep.status import target_trials
    from rtl.sweep.trial import tracker_for

    spec_path = write_spec(tmp_path, name="r", trials=N, scheduler={"name": "fifo"})
    spec = load_spec(spec_path)
    log = open(tmp_path / "run.log", "w")
    p = subprocess.Popen(_rtl("sweep", "run", str(spec_path)), stdout=log, stderr=subprocess.STDOUT, env=_env(),
                         start_new_session=True)
    db = Path(spec.results_dir) / "optuna.db"
    deadline = time.time() + 180
    finished: list = []
    try:
        while not finished:  # poll the Optuna storage until one trial finished
            assert p.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.5)
            if db.exists():
                try:
                    finished = [t for t in target_trials(spec.results_dir, "tgt") if t.state.name == "COMPLETE"]
                except Exception:  # study not created yet
                    finished = []
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert len(finished) < N
    first = finished[0].user_attrs["rtl.tune_trial_id"]

    r = subprocess.run(_rtl("sweep", "resume", spec.results_dir), capture_output=True, text=True, env=_env(),
                       timeout=300, start_new_session=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    trials = target_trials(spec.results_dir, "tgt")  # orphans of the killed driver excluded
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == N and all(t.state.name == "COMPLETE" for t in done)
    assert len({t.user_attrs["rtl.tune_trial_id"] for t in done}) == N
    controls = sorted(t.user_attrs.get("rtl.control", "") for t in done)
    assert controls.count("scratch") == 1 and controls.count("uniform") == 1  # controls run exactly once

    tracker = tracker_for(spec)
    runs = [x for x in tracker.trial_runs("tgt") if x.data.tags.get("rtl.orphaned") != "1"]
    ids = [x.data.tags["rtl.trial_id"] for x in runs]
    assert len(ids) == len(set(ids)) == N  # one MLflow run per trial id, never a duplicate
    assert all(x.info.status == "FINISHED" for x in runs)
    run = next(x for x in runs if x.data.tags["rtl.trial_id"] == first)
    assert len(tracker.client.get_metric_history(run.info.run_id, "final_val_error")) == 1  # not re-run
