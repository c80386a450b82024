"""A real 2-node Ray cluster + a real `mlflow server` on this machine's loopback, driven like a user would.

What `ray up cluster.yaml` + `ray job submit ... -- rtl sweep run` do on AWS, shrunk to 127.0.0.1:
* head: `ray start --head --block` (real CLI), worker: a second node process (tests/cluster_utils.py explains
  why it is not the `ray start --address` CLI on Linux), each in its own process group and temp dir;
  Ray token auth on, every listening socket on 127.0.0.1 (asserted);
* `mlflow server --host 127.0.0.1` with a SQLite store, polled on /health;
* jobs go through `ray job submit --address http://127.0.0.1:<dashboard>` with MLFLOW_TRACKING_URI in the
  job's runtime_env; the pytest process never joins the cluster (HTTP only), so the session's local
  `ray_session` fixture is untouched.
Everything is torn down in the fixture finaliser, also when a test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_utils import LoopbackCluster, MlflowServer, pids_mentioning, run_tags, wait_until  # noqa: E402

pytestmark = pytest.mark.slow
TRIAL_ACTOR = "ImplicitFunc"  # Ray Tune's actor class for a function trainable


@pytest.fixture(scope="module")
def cluster():
    """(LoopbackCluster with head + 1 worker, MlflowServer); both started concurrently."""
    c = LoopbackCluster()
    server = MlflowServer(c.root / "mlflow")
    try:
        server.launch()  # boots (DB migrations) while Ray starts
        c.start_head(num_cpus=1)
        c.add_worker(num_cpus=1)
        server.wait_healthy()
        yield c, server
    finally:
        c.shutdown()
        server.stop()
        left = pids_mentioning(str(c.root))  # every node/server process names its temp dir
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(c.root, ignore_errors=True)
        assert not left, f"processes survived teardown: {left}"


def _job_failure(c: LoopbackCluster, sid: str, proc=None) -> str:
    out = f"job {sid}: {c.job(sid).get('status')} {c.job(sid).get('message')}\n"
    if proc is not None:
        out += f"--- ray job submit stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-2000:]}\n"
    return out + f"--- job logs ---\n{c.job_logs(sid)[-6000:]}"


def _trial_runs(server: MlflowServer, experiment: str) -> list[dict]:
    return [r for r in server.search_runs(experiment) if run_tags(r).get("rtl.kind") == "trial"]


def _trial_nodes(c: LoopbackCluster, sid: str) -> Counter:
    """Node id of every Tune trial actor the job created (alive or dead), from Ray's state API."""
    job_id = c.job(sid).get("job_id")
    return Counter(a["node_id"] for a in c.actors() if a.get("class_name") == TRIAL_ACTOR
                   and a.get("job_id") == job_id)


def _sweep_spec(c: LoopbackCluster, name: str, trials: int, epochs: int, train_images: int = 4) -> Path:
    from sweep_helpers import write_spec, write_target

    ws = c.root / f"ws-{name}"
    write_target(ws / "targets" / "tgt", "tgt", per_split=(train_images, 2, 2))  # per class
    return write_spec(
        ws, name=name, trials=trials,
        budget={"pretrain_epochs": 1, "finetune_epochs": epochs, "trials_per_target": trials,
                "max_concurrent": 2, "batch_size": 8},
        scheduler={"name": "fifo"},  # every trial runs to the end: exact, comparable counts
        controls={"scratch": True, "uniform": False, "importance": False, "imagenet": False},
    )  # fmt: skip


def _assert_one_complete_run_per_trial(server: MlflowServer, experiment: str, trials: int) -> list[dict]:
    runs = _trial_runs(server, experiment)
    ids = Counter(run_tags(r)["rtl.trial_id"] for r in runs)
    assert len(runs) == trials and len(ids) == trials, f"runs per trial id: {dict(ids)}"
    states = Counter(run_tags(r).get("rtl.state") for r in runs)
    assert states == {"complete": trials}, states
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    assert all(any(m["key"] == "final_val_error" for m in r["data"].get("metrics", [])) for r in runs)
    return runs


def test_nodes_register_on_loopback_and_bind_nothing_else(cluster) -> None:
    c, server = cluster
    nodes = c.nodes()
    assert len(nodes) == 2
    assert {n["node_id"] for n in nodes} == {c.head.node_id, c.workers[0].node_id}
    assert all(n["node_ip"] == "127.0.0.1" for n in nodes), [n["node_ip"] for n in nodes]
    listening = c.listening_addresses() | server.listening_addresses()
    assert f"127.0.0.1:{c.gcs_port}" in listening and f"127.0.0.1:{c.dashboard_port}" in listening
    assert f"127.0.0.1:{server.port}" in listening
    assert all(a.startswith("127.") for a in listening), sorted(a for a in listening if not a.startswith("127."))


def test_concurrent_logging_from_both_nodes_loses_and_duplicates_nothing(cluster) -> None:
    """4 worker processes (2 per node) log 5 trial runs each to the server at the same time."""
    c, server = cluster
    procs_per_node, runs_per_proc, steps = 2, 5, 3
    entry = [sys.executable, str(Path(__file__).with_name("cluster_utils.py")), "log-runs",
             "--experiment", "concurrent", "--procs-per-node", str(procs_per_node),
             "--runs-per-proc", str(runs_per_proc), "--steps", str(steps)]  # fmt: skip
    r = c.submit_job(entry, env_vars={"MLFLOW_TRACKING_URI": server.url}, submission_id="concurrent",
                     timeout=240)
    assert r.returncode == 0, _job_failure(c, "concurrent", r)
    runs = _trial_runs(server, "concurrent")
    n = 2 * procs_per_node * runs_per_proc
    ids = Counter(run_tags(x)["rtl.trial_id"] for x in runs)
    assert len(runs) == n and len(ids) == n, f"duplicated or lost runs: {len(runs)} runs, {len(ids)} ids"
    assert {run_tags(x)["rtl.node_id"] for x in runs} == {c.head.node_id, c.workers[0].node_id}
    assert len({run_tags(x)["rtl.pid"] for x in runs}) == 2 * procs_per_node
    parents = [x for x in server.search_runs("concurrent") if run_tags(x).get("rtl.kind") == "target"]
    assert len(parents) == 1
    for x in runs:
        assert run_tags(x)["mlflow.parentRunId"] == parents[0]["info"]["run_id"]
        assert x["info"]["status"] == "FINISHED"
        history = server.metric_history(x["info"]["run_id"], "val_error")
        assert sorted(m["step"] for m in history) == list(range(1, steps + 1))


def test_sweep_job_runs_trials_on_both_nodes_and_tracks_each_once(cluster) -> None:
    c, server = cluster
    trials = 3
    spec = _sweep_spec(c, "mn", trials, epochs=1)
    r = c.submit_job(["rtl", "sweep", "run", str(spec)], env_vars={"MLFLOW_TRACKING_URI": server.url},
                     submission_id="sweep-mn", timeout=420)
    assert r.returncode == 0, _job_failure(c, "sweep-mn", r)
    runs = _assert_one_complete_run_per_trial(server, "mn", trials)
    both = {c.head.node_id, c.workers[0].node_id}
    placed = _trial_nodes(c, "sweep-mn")  # Tune reuses trial actors: count nodes, not actors
    assert set(placed) == both, placed
    tagged = [run_tags(x).get("rtl.node_id") for x in runs]
    if any(tagged):  # once the trainable tags its node (see docs/cluster.md), every run must carry it
        assert set(tagged) == both, tagged


def test_worker_killed_mid_sweep_sweep_still_completes(cluster) -> None:
    """SIGKILL the worker node's whole process group while a trial runs there; the sweep retries the
    trial on the surviving node and ends with exactly `trials` complete runs, none duplicated."""
    c, server = cluster
    worker = c.workers[0]
    trials = 2  # 1 control + 1 searched, started together on the two nodes
    spec = _sweep_spec(c, "kill", trials, epochs=4, train_images=24)
    sid = "sweep-kill"
    r = c.submit_job(["rtl", "sweep", "run", str(spec)], env_vars={"MLFLOW_TRACKING_URI": server.url},
                     submission_id=sid, wait=False, timeout=120)
    assert r.returncode == 0, _job_failure(c, sid, r)

    def trial_live_on_worker() -> bool:
        """The worker's trial is mid-run with its MLflow run registered. The two trials start together,
        one per node (1 CPU each), and Tune stops a trial's actor when it ends (no trial is pending), so:
        both runs registered + the worker's trial actor alive + a run still RUNNING. With the trainable's
        `rtl.node_id` tag the worker's run is identified directly."""
        job = c.job(sid)
        if job.get("status") in ("SUCCEEDED", "FAILED", "STOPPED"):
            raise AssertionError("sweep ended before a trial ran on the worker:\n" + _job_failure(c, sid))
        runs = _trial_runs(server, "kill")
        if any("rtl.node_id" in run_tags(r) for r in runs):
            return any(run_tags(r).get("rtl.node_id") == worker.node_id and r["info"]["status"] == "RUNNING"
                       for r in runs)
        return len(runs) == trials and any(r["info"]["status"] == "RUNNING" for r in runs) and any(
            a.get("class_name") == TRIAL_ACTOR and a.get("job_id") == job.get("job_id")
            and a["state"] == "ALIVE" and a["node_id"] == worker.node_id for a in c.actors())

    wait_until(trial_live_on_worker, 240, "a trial running on the worker node", interval=0.3)
    supervisor = [a for a in c.actors() if a.get("name") == f"_ray_internal_job_actor_{sid}"]
    assert [a["node_id"] for a in supervisor] == [c.head.node_id], "the job driver must live on the head"
    c.kill_node(worker)
    wait_until(lambda: worker.node_id not in {n["node_id"] for n in c.nodes()}, 90, "GCS to mark the node dead")

    status = wait_until(lambda: c.job(sid).get("status") in ("SUCCEEDED", "FAILED", "STOPPED")
                        and c.job(sid)["status"], 420, "the sweep job to end", interval=1.0)
    assert status == "SUCCEEDED", _job_failure(c, sid)
    _assert_one_complete_run_per_trial(server, "kill", trials)
    placed = _trial_nodes(c, sid)
    assert placed[worker.node_id] >= 1 and placed[c.head.node_id] >= 1, placed
