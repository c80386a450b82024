"""Issue 17: a local run opens no port to the network.

Every Ray-using verb runs on tiny data in a subprocess started WITHOUT `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`
(Ray's Linux default then binds its GCS, raylet, object manager and agents to the machine's interface
address or to 0.0.0.0), and the TCP listening sockets (/proc/net/tcp and tcp6, mapped to the socket inodes
of /proc/<pid>/fd) of that process and all its descendants must all be on loopback:

* one process runs `pretrain` (Ray Train, 2 DDP workers: starts the local Ray) then `corpus build` (Ray
  Data) on that Ray through `rtl.cli.main`, while a thread samples its sockets every 0.2 s;
* `sweep run` (Ray Tune) runs as `rtl` itself; the test samples its sockets while a trial runs, then
  sends Ctrl-C and expects exit 130 (the same run, to start Ray once).

Every verb starts Ray through `rtl.raystart.ensure_ray` (pinned by `test_ray_is_started_in_one_place_only`).
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_utils import _descendants, listening_addresses  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK_PREFIXES = ("127.", "::1")


def _is_loopback(addr: str) -> bool:
    return addr.rsplit(":", 1)[0].startswith(LOOPBACK_PREFIXES)


def _probe(argvs: list[list[str]], out: Path) -> int:
    """Run each argv through `rtl.cli.main`, sampling listening sockets throughout; results to `out`."""
    seen: set[str] = set()
    owners: dict[str, str] = {}  # non-loopback address -> command line of the process holding it
    stop = threading.Event()

    def sample() -> None:
        pids = {os.getpid(), *_descendants(os.getpid())}
        now = listening_addresses(pids)
        seen.update(now)
        for addr in {a for a in now if not _is_loopback(a)} - set(owners):
            for pid in pids:
                if addr in listening_addresses({pid}):
                    try:
                        owners[addr] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
                    except OSError:
                        pass

    def loop() -> None:
        while not stop.wait(0.2):
            sample()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    from rtl.cli import main

    rcs, seconds = [], []
    for argv in argvs:
        t0 = time.perf_counter()
        rcs.append(main(argv))
        seconds.append(round(time.perf_counter() - t0, 1))
        sample()
    stop.set()
    t.join()
    out.write_text(json.dumps({"rcs": rcs, "seconds": seconds, "listening": sorted(seen), "owners": owners}))
    return 0


def _env() -> dict[str, str]:
    """The caller's environment minus Ray's loopback switch, any cluster address and tracking server."""
    drop = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "MLFLOW_TRACKING_URI", "TUNE_DISABLE_SIGINT_HANDLER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_pretrain_and_corpus_build_listen_on_loopback_only(tmp_path: Path) -> None:
    from sweep_helpers import write_corpus, write_target

    write_corpus(tmp_path / "corpus")
    src = write_target(tmp_path / "src", "src")
    argvs = [
        ["pretrain", "--corpus", str(tmp_path / "corpus"), "--strategy", "source", "--backbone", "small_cnn",
         "--epochs", "1", "--workers", "2", "--batch-size", "8", "--out", str(tmp_path / "ckpt")],
        ["corpus", "build", str(src), "--out", str(tmp_path / "built"), "--min-side", "32", "--max-side", "40",
         "--quiet"],
    ]
    result = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, __file__, json.dumps(argvs), str(result)], env=_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and result.exists(), r.stderr[-3000:]
    got = json.loads(result.read_text())
    assert got["rcs"] == [0, 0], (got, r.stderr[-3000:])
    assert (tmp_path / "built" / "manifest.json").exists() and (tmp_path / "ckpt" / "model.pt").exists()
    assert len(got["listening"]) >= 5, got  # the probe saw Ray's GCS, raylet, agents...: it is not blind
    exposed = [a for a in got["listening"] if not _is_loopback(a)]
    assert not exposed, f"listening beyond loopback: {got['owners']}"


def _terminal_sigint() -> None:
    """In the child: SIGINT as a shell's foreground job gets it (default action, not blocked). Ignored or
    blocked dispositions survive exec, and after other tests of the session (Ray, Tune, Ray Train install
    and juggle SIGINT handlers in this process) the sweep started here ignored Ctrl-C and exited 0."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_sweep_listens_on_loopback_and_ctrl_c_exits_130(tmp_path: Path) -> None:
    """`rtl sweep run` while a trial runs: every listening socket of its process tree is on loopback. Then
    Ctrl-C (SIGINT to the terminal's process group): the sweep stops at once with exit 130 and one line,
    instead of Tune ending the experiment quietly and the sweep carrying on (and exiting 0)."""
    from cluster_utils import kill_tree
    from sweep_helpers import write_spec

    spec = write_spec(tmp_path, name="cc", trials=3, scheduler={"name": "fifo"},
                      budget={"pretrain_epochs": 1, "finetune_epochs": 400, "trials_per_target": 3,
                              "max_concurrent": 1, "batch_size": 8})
    proc = subprocess.Popen([sys.executable, "-m", "rtl.cli", "sweep", "run", str(spec)], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_terminal_sigint)
    seen: set[str] = set()
    try:
        sig = Path(f"/proc/{proc.pid}/status").read_text()  # SigBlk / SigIgn of the driver, for the message
        sig = " ".join(line for line in sig.splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
        deadline = time.monotonic() + 400
        while not any((tmp_path / "cc").rglob("params.json")):  # Tune wrote a trial's config: it runs
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no trial started"
            seen |= listening_addresses({proc.pid, *_descendants(proc.pid)})
            time.sleep(0.5)
        for _ in range(4):
            seen |= listening_addresses({proc.pid, *_descendants(proc.pid)})
            time.sleep(0.25)
        # Ctrl-C as a terminal sends it (the whole process group). Seen once in a clean-clone run: the first
        # SIGINT was swallowed and the sweep ran to the end (exit 0); a user presses again, so does this
        # test (every 15 s, at most 4 times) -- what it asserts is that Ctrl-C stops the sweep with 130.
        for attempt in range(4):
            os.killpg(proc.pid, signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=15 if attempt < 3 else 180)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        kill_tree(proc)
    assert len(seen) >= 5, seen  # Ray's GCS, raylet, agents, workers were seen: the probe is not blind
    assert not [a for a in seen if not _is_loopback(a)], seen
    assert proc.returncode == 130, f"{sig}\n{err[-2000:]}"
    assert err.strip().splitlines()[-1] == "rtl: interrupted", err[-2000:]


def test_ray_is_started_in_one_place_only() -> None:
    """Every verb goes through rtl.raystart.ensure_ray: no other `ray.init(` call in the package."""
    calls = []
    for path in (ROOT / "rtl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray"):
                calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls and all(c.startswith("rtl/raystart.py:") for c in calls), calls


def test_loopback_check_flags_a_wildcard_bind() -> None:
    """The address test above can fail: wildcard and interface binds are not loopback."""
    assert _is_loopback("127.0.0.1:6379") and _is_loopback("::1:8265")
    for addr in ("0.0.0.0:6379", ":::6379", "192.0.2.2:6379", "fd00::2:1"):
        assert not _is_loopback(addr), addr


if __name__ == "__main__":
    sys.exit(_probe(json.loads(sys.argv[1]), Path(sys.argv[2])))
