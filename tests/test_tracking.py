"""MLflow tracking: a trial run is re-attached by its trial id, never duplicated; params readable."""

from __future__ import annotations

from pathlib import Path

from rtl.sweep.tracking import Tracker, default_tracking_uri, mask_params


def test_default_uri_and_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(str(tmp_path)) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert default_tracking_uri(str(tmp_path)) == "http://mlflow:5000"


def test_mask_params() -> None:
    assert mask_params(["c", "a"], ["a", "b", "c"]) == {"mask": "a,c", "mask_bits": "101"}
    assert mask_params(None, ["a"]) == {"mask": "none", "mask_bits": ""}


def test_trial_run_reattached_not_duplicated(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = default_tracking_uri(str(tmp_path))
    t = Tracker(uri, "sweep", str(tmp_path / "art"))
    r1 = t.get_or_create_trial_run("trial-1", target="tgt", name="tgt#0")
    t.log_params(r1, {"lr": 0.1, **mask_params(["a"], ["a", "b"])})
    t.log_metrics(r1, {"val_error": 0.5}, step=1)
    t.finish(r1)
    # a new process after a crash: same trial id -> same run; re-logging params is a no-op
    t2 = Tracker(uri, "sweep", str(tmp_path / "art"))
    r2 = t2.get_or_create_trial_run("trial-1", target="tgt", name="tgt#0")
    t2.log_params(r2, {"lr": 0.1})
    t2.get_or_create_trial_run("trial-2", target="tgt", name="tgt#1")
    assert r1 == r2
    runs = t2.trial_runs("tgt")
    assert sorted(r.data.tags["rtl.trial_id"] for r in runs) == ["trial-1", "trial-2"]
    run = t2.client.get_run(r1)
    assert run.data.params["mask"] == "a" and run.data.params["mask_bits"] == "10"
    assert run.data.tags["mlflow.parentRunId"] == t2.get_or_create_target_run("tgt")
    assert t2.experiment_id == t.experiment_id
    history = [{"epoch": 0, "train_loss": 2.0, "lr": 0.1}, {"epoch": 1, "train_loss": 1.5, "lr": 0.05}]
    pre = t2.get_or_create_pretrain_run("k" * 64, {"mask": "a"}, history)
    assert t2.find_pretrain_run("k" * 64) == pre == t2.get_or_create_pretrain_run("k" * 64, {"mask": "a"}, history)
    # per-epoch pretraining metrics logged once, although two trials linked the same cached pretraining
    losses = t2.client.get_metric_history(pre, "train_loss")
    assert [(m.step, m.value) for m in losses] == [(0, 2.0), (1, 1.5)]


def _open_store(uri: str, q) -> None:
    from rtl.sweep.tracking import Tracker

    try:
        Tracker(uri, "x").get_or_create_target_run("t")
        q.put("ok")
    except Exception as e:  # noqa: BLE001 -- reported to the parent
        q.put(f"{type(e).__name__}: {str(e)[:120]}")


def test_processes_opening_a_new_sqlite_store_at_once_all_succeed(tmp_path) -> None:
    """Regression: two trials opening a new sweep's mlflow.db at once raced on MLflow's schema migration
    and left it half-migrated (`table _alembic_tmp_tags already exists` for every later trial)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    q = ctx.Queue()
    procs = [ctx.Process(target=_open_store, args=(uri, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [q.get(timeout=5) for _ in procs] == ["ok"] * 4
    _open_store(uri, q)  # and the store stays usable
    assert q.get(timeout=5) == "ok"
