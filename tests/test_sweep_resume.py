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
    import optuna

    from rtl.sweep.search import counted
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
    storage = study = None
    try:
        # poll the Optuna storage until one trial finished -- through one storage opened once: opening it per poll
        # (engine + schema check) took longer on a loaded 2-core CI machine than the sweep's last 3 trials, and
        # the kill once landed after all of them had finished
        while not finished:
            assert p.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.1)
            if db.exists():
                try:
                    if storage is None:
                        storage = optuna.storages.RDBStorage(spec.optuna_url(),
                                                             engine_kwargs={"connect_args": {"timeout": 30}})
                    if study is None:  # loaded, never created here: KeyError until the sweep created it
                        study = optuna.load_study(study_name=f"{spec.name}/tgt", storage=storage)
                    finished = [t for t in study.get_trials(deepcopy=False)
                                if counted(t) and t.state.name == "COMPLETE"]
                except Exception:  # storage or study not set up yet
                    finished = []
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert len(finished) < N
    first = finished[0].user_attrs["rtl.tune_trial_id"]
    # the kill can land while Ray re-syncs the experiment dir, which truncates what it was rewriting: the
    # worst case, every such file at once (a 0-byte tuner.pkl once made every resume die in Tuner.restore)
    # (rtl's copy of tuner.pkl gone too: resume writes tuner.pkl anew; the copy is tests/test_sweep_kill_files.py's)
    exp = Path(spec.results_dir) / "ray_results" / "tgt"
    (exp / "tuner.pkl").write_bytes(b"")
    (exp / ".rtl-tuner.pkl").unlink()
    states = sorted(exp.glob("experiment_state-*.json"))
    if states:
        states[-1].write_text(states[-1].read_text()[:20])

    r = subprocess.run(_rtl("sweep", "resume", spec.results_dir), capture_output=True, text=True, env=_env(),
                       timeout=300, start_new_session=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    trials = target_trials(spec.results_dir, "tgt")  # orphans of the killed driver excluded
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == N, ([(t.number, t.state.name, t.user_attrs) for t in trials], r.stdout[-3000:])
    assert len(done) == N and all(t.state.name == "COMPLETE" for t in done)
    assert len({t.user_attrs["rtl.tune_trial_id"] for t in done}) == N
    controls = sorted(t.user_attrs.get("rtl.control", "") for t in done)
    assert controls.count("scratch") == 1 and controls.count("uniform") == 1  # controls run exactly once

    tracker = tracker_for(spec)
    runs = [x for x in tracker.trial_runs("tgt") if x.data.tags.get("rtl.orphaned") != "1"]
    ids = [x.data.tags["rtl.trial_id"] for x in runs]
    assert len(ids) == len(set(ids)) == N  # one MLflow run per trial id, never a duplicate
    assert all(x.info.status == "FINISHED" for x in runs)
    for x in runs:  # an epoch logged before the kill is never logged again (exact resume / dedupe)
        steps = [m.step for m in tracker.client.get_metric_history(x.info.run_id, "val_error")]
        assert len(steps) == len(set(steps)) == spec.budget.finetune_epochs, (x.data.tags["rtl.trial_id"], steps)
    run = next(x for x in runs if x.data.tags["rtl.trial_id"] == first)
    assert len(tracker.client.get_metric_history(run.info.run_id, "final_val_error")) == 1  # not re-run


class _Killed(Exception):
    pass


class _FakeTune:
    """Stands in for the Tune session inside `run_trial` (no Ray): keeps reports and a copy of each
    checkpoint; `kill_after` raises once that epoch's checkpoint was taken (SIGKILL of the trial)."""

    def __init__(self, trial_id: str, tmp: Path, checkpoint=None, kill_after: int | None = None) -> None:
        self.trial_id, self.tmp, self.checkpoint, self.kill_after = trial_id, tmp, checkpoint, kill_after
        self.reports: list[dict] = []

    def install(self, monkeypatch) -> None:
        import types

        from ray import tune

        monkeypatch.setattr(tune, "get_context", lambda: types.SimpleNamespace(get_trial_id=lambda: self.trial_id))
        monkeypatch.setattr(tune, "get_checkpoint", lambda: self.checkpoint)
        monkeypatch.setattr(tune, "report", self.report)

    def report(self, metrics: dict, checkpoint=None) -> None:
        import shutil

        from ray import tune

        dst = self.tmp / f"ckpt_{len(list(self.tmp.glob('ckpt_*')))}"
        shutil.copytree(checkpoint.path, dst)
        self.checkpoint = tune.Checkpoint.from_directory(str(dst))
        self.reports.append(dict(metrics))
        if metrics["epoch"] == self.kill_after:
            raise _Killed


def test_trial_restarts_from_its_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """`run_trial` killed after epoch 1 and restarted with its checkpoint runs epochs 2-3 only, and its
    per-epoch MLflow metrics equal those of an uninterrupted trial of the same configuration."""
    import pytest

    from rtl.sweep.spec import save_resolved
    from rtl.sweep.trial import run_trial, tracker_for

    spec = load_spec(write_spec(tmp_path, name="x", budget={"pretrain_epochs": 1, "finetune_epochs": 3,
                                                            "trials_per_target": 4, "max_concurrent": 1,
                                                            "batch_size": 4}))
    os.makedirs(spec.results_dir, exist_ok=True)
    save_resolved(spec, os.path.join(spec.results_dir, "spec.json"))
    trial = {"number": 0, "control": "scratch", "seed": 0, "init": "scratch", "mask": None, "temperature": None,
             "lr": 0.05, "freeze_depth": 0, "regularizer": "none", "reg_strength": 0.0}
    config = {"rtl": {"results_dir": spec.results_dir, "target": "tgt"}, "trial": trial}

    straight = _FakeTune("straight", tmp_path)
    straight.install(monkeypatch)
    run_trial(config)

    first = _FakeTune("killed", tmp_path, kill_after=1)
    first.install(monkeypatch)
    with pytest.raises(_Killed):
        run_trial(config)
    second = _FakeTune("killed", tmp_path, checkpoint=first.checkpoint)
    second.install(monkeypatch)
    run_trial(config)

    assert [r["epoch"] for r in first.reports + second.reports] == [1, 2, 3]  # no epoch reported twice
    assert second.reports[-1]["finished"] and second.reports[-1] == straight.reports[-1]
    tracker = tracker_for(spec)
    runs = {r.data.tags["rtl.trial_id"]: r for r in tracker.trial_runs("tgt")}
    assert runs["killed"].data.tags["rtl.resumed_after_epoch"] == "1"
    for key in ("train_loss", "val_loss"):
        a = {m.step: m.value for m in tracker.client.get_metric_history(runs["straight"].info.run_id, key)}
        b = [(m.step, m.value) for m in tracker.client.get_metric_history(runs["killed"].info.run_id, key)]
        assert sorted(s for s, _ in b) == [1, 2, 3]
        for step, v in b:
            assert v == pytest.approx(a[step], abs=1e-6), (key, step)
