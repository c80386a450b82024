"""Start and stop a real multi-node Ray cluster and an MLflow server on loopback, for tests.

Why this exists: `ray up` starts one `ray start --head` and N `ray start --address ...` processes on
separate machines. The test suite reproduces that on one machine with every socket on 127.0.0.1:

* Each node is its own process tree in its own process group (so one node can be killed like a
  terminated instance), with its own short `--temp-dir` (Ray's unix socket paths are length-limited)
  so nothing collides with the test session's local `ray.init()` or with another node.
* Linux finding (Ray 2.60): with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1` (the Linux default) `ray start
  --node-ip-address 127.0.0.1` is rewritten to the interface address, and a node IP other than
  127.0.0.1 (e.g. 127.0.0.2) makes GCS/raylet/agents listen on the wildcard address. With the variable
  set to 0 every Ray socket binds 127.0.0.1, but the `ray start --address` CLI then refuses to start a
  non-head node. So the head is started with the real `ray start --head --block` CLI and worker nodes
  with `python tests/cluster_utils.py worker ...`, which runs exactly what `ray start --block` runs for a
  worker (`ray._private.node.Node(head=False, shutdown_at_exit=True, spawn_reaper=True)`, the same
  code path `ray.cluster_utils.Cluster` uses) in its own process.
* The pytest process never calls `ray.init` on this cluster: it talks HTTP to the dashboard (state and
  job APIs) and to MLflow, so the session's local Ray fixture is unaffected.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent
OBJECT_STORE_BYTES = 100 * 1024 * 1024


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def short_tmpdir(prefix: str = "rtlmn") -> Path:
    """A fresh directory with a short path under /tmp (unix sockets must stay < 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for node, driver and server processes: loopback-only Ray, no usage stats."""
    env = dict(os.environ)
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)  # never inherit a cluster address or credentials from the caller
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keeps every Ray socket on 127.0.0.1 (see module doc)
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra or {})
    return env


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `predicate()` until it returns a truthy value; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_json(url: str, data: dict | None = None, timeout: float = 10.0, token: str = "") -> Any:
    """GET (or POST `data` as JSON) and decode the JSON answer; `token` = Ray auth bearer token."""
    body = None if data is None else json.dumps(data).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode() or "null")


def _descendants(pid: int) -> list[int]:
    """All descendant pids of `pid` (reads /proc; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _pids_in_group(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


def pids_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `text` (e.g. a cluster's temp dir)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if text in cmd and not zombie:
            out.append(int(entry))
    return out


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL, grace: float = 0.0) -> None:
    """Signal the process group led by `proc` (started with start_new_session) and every descendant.

    With `grace` > 0 a SIGTERM is sent first so Ray can shut its children down cleanly.
    """
    if proc.poll() is None and grace > 0:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    pids = set(_descendants(proc.pid)) | set(_pids_in_group(proc.pid))
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class NodeProc:
    """One Ray node: the process leading its group, its log and temp dir, its Ray node id."""

    name: str
    proc: subprocess.Popen
    log: Path
    temp_dir: Path
    node_id: str = ""

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class LoopbackCluster:
    """A head and worker nodes on 127.0.0.1, each a separate process group with its own temp dir."""

    root: Path = field(default_factory=short_tmpdir)
    gcs_port: int = 0
    dashboard_port: int = 0
    head: NodeProc | None = None
    workers: list[NodeProc] = field(default_factory=list)
    # Ray 2.60 token auth, as on a real cluster: every node, driver and HTTP client presents this token.
    # Passed by env so nothing is read from or written to ~/.ray/auth_token.
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = node_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **self.env})

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def _spawn(self, name: str, cmd: list[str]) -> NodeProc:
        temp = self.root / name
        temp.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                cmd + ["--temp-dir", str(temp)],
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # own process group: one killpg = one node gone
                cwd=self.root,
            )
        return NodeProc(name, proc, log, temp)

    def start_head(self, num_cpus: int = 1, resources: dict[str, int] | None = None,
                   timeout: float = 90) -> NodeProc:
        """`ray start --head --block` exactly as a user (or `ray up`) runs it, on loopback."""
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        cmd = [
            str(VENV_BIN / "ray"), "start", "--head", "--block",
            "--node-ip-address", LOOPBACK, "--port", str(self.gcs_port),
            "--num-cpus", str(num_cpus), "--num-gpus", "0",
            "--resources", json.dumps(resources or {}),
            "--object-store-memory", str(OBJECT_STORE_BYTES),
            "--include-dashboard", "true", "--dashboard-host", LOOPBACK,
            "--dashboard-port", str(self.dashboard_port),
            "--dashboard-agent-listen-port", str(free_port()),
            "--ray-client-server-port", str(free_port()),
            "--min-worker-port", "0", "--max-worker-port", "0",
            "--disable-usage-stats",
        ]  # fmt: skip
        self.head = self._spawn("head", cmd)
        self._wait_nodes(1, timeout, self.head)
        self.head.node_id = next(n["node_id"] for n in self.nodes() if n.get("is_head_node"))
        return self.head

    def add_worker(self, num_cpus: int = 1, resources: dict[str, int] | None = None,
                   timeout: float = 90) -> NodeProc:
        """A worker node as `ray start --address HEAD --block` starts it (see module docstring)."""
        assert self.head is not None, "start_head() first"
        before = {n["node_id"] for n in self.nodes()}
        name = f"w{len(self.workers) + 1}"
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "worker",
            "--address", self.address, "--num-cpus", str(num_cpus),
            "--resources", json.dumps(resources or {}),
        ]  # fmt: skip
        node = self._spawn(name, cmd)
        self.workers.append(node)
        self._wait_nodes(len(before) + 1, timeout, node)
        node.node_id = next(n["node_id"] for n in self.nodes() if n["node_id"] not in before)
        return node

    def kill_node(self, node: NodeProc) -> None:
        """SIGKILL the node's whole process group: what a terminated spot instance looks like."""
        kill_tree(node.proc, signal.SIGKILL)

    def nodes(self, alive_only: bool = True) -> list[dict]:
        """Nodes from the dashboard's state API (HTTP; the test process never joins the cluster)."""
        try:
            out = http_json(f"{self.dashboard_url}/api/v0/nodes?limit=100&detail=1", token=self.token)
        except (OSError, ValueError):
            return []
        rows = out.get("data", {}).get("result", {}).get("result", []) if out else []
        return [r for r in rows if not alive_only or r.get("state") == "ALIVE"]

    def actors(self) -> list[dict]:
        """Actors (alive and dead) from the state API: class_name, state, node_id, pid, ..."""
        out = http_json(f"{self.dashboard_url}/api/v0/actors?limit=10000&detail=1", token=self.token)
        return out.get("data", {}).get("result", {}).get("result", []) if out else []

    def submit_job(self, entrypoint: list[str], *, env_vars: dict[str, str], submission_id: str,
                   wait: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray job submit --address http://127.0.0.1:<dashboard> ...` as a user runs it (CLI process).

        With `wait` the CLI follows the job and exits 1 when it failed; otherwise it returns at once.
        """
        cmd = [
            str(VENV_BIN / "ray"), "job", "submit", "--address", self.dashboard_url,
            "--submission-id", submission_id,
            "--runtime-env-json", json.dumps({"env_vars": env_vars}),
            *([] if wait else ["--no-wait"]), "--", *entrypoint,
        ]  # fmt: skip
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    def job(self, submission_id: str) -> dict:
        """Job info (status, message, ...) from the jobs REST API."""
        return http_json(f"{self.dashboard_url}/api/jobs/{submission_id}", token=self.token) or {}

    def job_logs(self, submission_id: str) -> str:
        try:
            return http_json(f"{self.dashboard_url}/api/jobs/{submission_id}/logs", token=self.token)["logs"]
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def _wait_nodes(self, n: int, timeout: float, node: NodeProc) -> None:
        def ready():
            if node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited rc={node.proc.returncode}:\n{node.log_tail()}")
            return len(self.nodes()) >= n

        try:
            wait_until(ready, timeout, f"{n} alive Ray node(s)", interval=0.5)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{node.log_tail()}") from None

    def listening_addresses(self) -> set[str]:
        """Local addresses of TCP listening sockets owned by this cluster's processes."""
        pids: set[int] = set()
        for node in [self.head, *self.workers]:
            if node is not None and node.proc.poll() is None:
                pids |= {node.proc.pid, *_descendants(node.proc.pid), *_pids_in_group(node.proc.pid)}
        return listening_addresses(pids)

    def shutdown(self) -> None:
        for node in [*self.workers, self.head]:
            if node is not None:
                kill_tree(node.proc, signal.SIGKILL, grace=5.0)


def listening_addresses(pids: set[int]) -> set[str]:
    """'ip:port' of every listening TCP socket (v4 and v6) owned by one of `pids`, from /proc."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    out: set[str] = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                continue
            hexip, hexport = cols[1].split(":")
            raw = bytes.fromhex(hexip)
            if v6:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                ip = socket.inet_ntop(socket.AF_INET6, words)
                ip = ip.removeprefix("::ffff:")
            else:
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            out.add(f"{ip}:{int(hexport, 16)}")
    return out


@dataclass
class MlflowServer:
    """A real `mlflow server` process on 127.0.0.1 with a SQLite store and a file artifact root."""

    root: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Path = Path("/dev/null")

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def launch(self) -> MlflowServer:
        """Start the server process without waiting (it runs its DB migrations while Ray boots)."""
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "mlflow-server.log"
        cmd = [
            str(VENV_BIN / "mlflow"), "server", "--host", LOOPBACK, "--port", str(self.port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--default-artifact-root", (self.root / "artifacts").as_uri(),
        ]  # fmt: skip
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=node_env(), start_new_session=True, cwd=self.root,
            )  # fmt: skip
        return self

    def wait_healthy(self, timeout: float = 180) -> MlflowServer:
        """Poll GET /health until it answers 200 (raise with the server log if the process died)."""
        assert self.proc is not None, "launch() first"

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited rc={self.proc.returncode}:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    return r.status == 200
            except (OSError, urllib.error.URLError):
                return False

        wait_until(healthy, timeout, f"mlflow server /health on {self.url}", interval=0.5)
        return self

    def start(self, timeout: float = 180) -> MlflowServer:
        return self.launch().wait_healthy(timeout)

    def listening_addresses(self) -> set[str]:
        if self.proc is None or self.proc.poll() is not None:
            return set()
        pid = self.proc.pid
        return listening_addresses({pid, *_descendants(pid), *_pids_in_group(pid)})

    def metric_history(self, run_id: str, key: str) -> list[dict]:
        q = urllib.parse.urlencode({"run_id": run_id, "metric_key": key, "max_results": 1000})
        return http_json(f"{self.url}/api/2.0/mlflow/metrics/get-history?{q}").get("metrics", [])

    def search_runs(self, experiment_name: str | None = None) -> list[dict]:
        """Every run (all pages) of one experiment, or of all experiments, via the REST API."""
        exps = http_json(f"{self.url}/api/2.0/mlflow/experiments/search", {"max_results": 1000})
        ids = [
            e["experiment_id"]
            for e in exps.get("experiments", [])
            if experiment_name is None or e["name"] == experiment_name
        ]
        if not ids:
            return []
        runs, token = [], None
        while True:
            body: dict[str, Any] = {"experiment_ids": ids, "max_results": 1000, "run_view_type": "ALL"}
            if token:
                body["page_token"] = token
            out = http_json(f"{self.url}/api/2.0/mlflow/runs/search", body)
            runs += out.get("runs", [])
            token = out.get("next_page_token")
            if not token:
                return runs

    def stop(self) -> None:
        if self.proc is not None:
            kill_tree(self.proc, signal.SIGKILL, grace=3.0)


def run_tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}


# --------------------------------------------------------------------------------------------------
# `python tests/cluster_utils.py worker --address HOST:PORT ...`: a worker node process.


def _worker_main(argv: list[str]) -> int:
    """Mirror of the worker branch of `ray start --block` (ray/scripts/scripts.py), on 127.0.0.1."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--num-cpus", type=int, default=1)
    p.add_argument("--resources", default="{}")
    p.add_argument("--temp-dir", required=True)
    a = p.parse_args(argv)

    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        node_ip_address=LOOPBACK,
        gcs_address=a.address,
        num_cpus=a.num_cpus,
        num_gpus=0,
        resources=json.loads(a.resources),
        object_store_memory=OBJECT_STORE_BYTES,
        temp_dir=a.temp_dir,
        min_worker_port=0,
        max_worker_port=0,
        node_manager_port=0,
        dashboard_agent_listen_port=free_port(),
    )
    node = ray._private.node.Node(
        params, head=False, shutdown_at_exit=True, spawn_reaper=True, connect_only=False
    )
    print(f"RTL_WORKER_NODE_ID={node.node_id} ip={node.node_ip_address}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # atexit then stops the node's processes
    while True:
        time.sleep(1)
        dead = node.dead_processes()
        if dead:
            print(f"node processes exited: {dead}", flush=True)


# --------------------------------------------------------------------------------------------------
# `python tests/cluster_utils.py log-runs ...`: a Ray job (driver) for the concurrent-logging test.


def _log_runs_main(argv: list[str]) -> int:
    """Driver: on every alive node, `procs_per_node` Ray tasks (separate worker processes) pinned to that
    node log `runs_per_proc` trial runs each through `rtl.sweep.tracking.Tracker`, all at once.

    The driver creates the experiment and the target parent run first, as `rtl sweep run` does. Each run
    is tagged with the Ray node id of the process that wrote it (`rtl.node_id`).
    """
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--experiment", required=True)
    p.add_argument("--procs-per-node", type=int, default=2)
    p.add_argument("--runs-per-proc", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args(argv)

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rtl.sweep.tracking import Tracker

    uri = os.environ["MLFLOW_TRACKING_URI"]
    Tracker(uri, a.experiment).get_or_create_target_run("tgt")
    ray.init(log_to_driver=True)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]

    @ray.remote(num_cpus=1.0 / a.procs_per_node, max_retries=0)
    def log_runs(proc: int) -> list[str]:
        import random

        node = ray.get_runtime_context().get_node_id()
        tracker = Tracker(uri, a.experiment)
        out = []
        for i in range(a.runs_per_proc):
            trial_id = f"p{proc:02d}_r{i:02d}"
            run_id = tracker.get_or_create_trial_run(trial_id, target="tgt", name=trial_id,
                                                     tags={"rtl.node_id": node, "rtl.pid": str(os.getpid())})
            tracker.log_params(run_id, {"proc": proc, "i": i})
            for step in range(1, a.steps + 1):
                tracker.log_metrics(run_id, {"val_error": random.random()}, step=step)
            tracker.finish(run_id)
            out.append(run_id)
        return out

    refs = [
        log_runs.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            k * a.procs_per_node + j)
        for k, node in enumerate(nodes)
        for j in range(a.procs_per_node)
    ]
    ids = [r for chunk in ray.get(refs) for r in chunk]
    print(json.dumps({"nodes": nodes, "run_ids": ids}), flush=True)
    return 0


if __name__ == "__main__":
    verb = sys.argv[1] if len(sys.argv) > 1 else ""
    if verb == "worker":
        sys.exit(_worker_main(sys.argv[2:]))
    if verb == "log-runs":
        sys.exit(_log_runs_main(sys.argv[2:]))
    sys.exit("usage: cluster_utils.py worker|log-runs ...")
