"""Option values are refused at parse time (exit 2, one line, nothing written), exit codes follow the README
(2 input, 1 runtime failure, 130 Ctrl-C), `rtl ui` stays on loopback unless told, and `ensure_ray` starts
a local Ray on 127.0.0.1 only while joining a named cluster unchanged (issues 12 items 10 and 15, 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtl import cli
from rtl.errors import RtlError, RtlRuntimeError


def _exit(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of `rtl argv` run in-process."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


BAD = [  # (argv, text the one-line error must contain)
    (["corpus", "build", "D", "--out", "O", "--max-patches", "0"], "--max-patches"),
    (["corpus", "build", "D", "--out", "O", "--min-side", "8", "--max-side", "8", "--max-downscale", "1"],
     "--min-side: image side (px) must be >= 16, got 8"),
    (["corpus", "build", "D", "--out", "O", "--max-downscale", "0.5"], "--max-downscale"),
    (["corpus", "build", "D", "--out", "O", "--min-side", "64", "--max-side", "32"],
     "--min-side (64) must be <= --max-side (32)"),
    (["corpus", "build", "D", "--out", "O", "--cap", "-1"], "--cap"),
    (["corpus", "build", "D", "--out", "O", "--seed", "-5"], "--seed"),
    (["corpus", "build", "D", "--out", "O", "--min-defect-px", "nan"], "finite"),
    (["ui", "--port", "99999"], "--port: port must be in 1..65535, got 99999"),
    (["ui", "--port", "0"], "--port"),
    (["ui", "--host", "my laptop"], "--host"),
    (["pretrain", "--out", "C", "--epochs", "-1"], "--epochs"),
    (["pretrain", "--out", "C", "--workers", "0"], "--workers"),
    (["pretrain", "--out", "C", "--lr", "inf"], "--lr"),
    (["pretrain", "--out", "C", "--max-failures", "-2"], "--max-failures"),
    (["finetune", "--target", "T", "--init", "scratch", "--batch-size", "-4"], "--batch-size"),
    (["finetune", "--target", "T", "--init", "scratch", "--epochs", "0"], "--epochs"),
    (["finetune", "--target", "T", "--init", "scratch", "--seeds", "0,-1"], "--seeds"),
    (["finetune", "--target", "T", "--init", "scratch", "--lr", "0"], "--lr"),
    (["select", "weights", "--target", "T", "--corpus", "C", "--top-k", "0"], "--top-k"),
    (["select", "weights", "--target", "T", "--corpus", "C", "--mass-threshold", "1.5"], "--mass-threshold"),
    (["synth", "OUT", "--seed", "-1"], "--seed"),
]


@pytest.mark.parametrize("argv,msg", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_bad_option_values_exit_2_before_anything_runs(argv, msg, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, err = _exit(argv, capsys)
    assert rc == 2, err
    assert msg in err, err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if "error:" in ln] == [err.strip().splitlines()[-1]]
    assert not any(tmp_path.iterdir()), "a refused command wrote something"


def test_valid_edge_values_parse() -> None:
    """The checks refuse only nonsense: the smallest meaningful values still parse."""
    p = cli.build_parser()
    a = p.parse_args(["corpus", "build", "D", "--out", "O", "--min-side", "16", "--max-side", "16",
                      "--max-downscale", "1", "--max-patches", "1", "--cap", "0", "--min-defect-px", "0"])
    assert (a.min_side, a.max_downscale, a.max_patches, a.cap) == (16, 1.0, 1, 0)
    a = p.parse_args(["ui", "--port", "65535", "--host", "localhost"])
    assert (a.port, a.host) == (65535, "127.0.0.1")
    a = p.parse_args(["finetune", "--target", "T", "--init", "scratch", "--seeds", "0,1,2", "--freeze-depth", "0"])
    assert a.seeds == [0, 1, 2] and a.freeze_depth == 0


def test_ui_port_out_of_range_is_exit_2_in_a_real_process() -> None:
    """The issue's reproduction: a traceback and exit 0 before."""
    r = subprocess.run([sys.executable, "-m", "rtl.cli", "ui", "--port", "99999"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "port must be in 1..65535" in r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("exc,code", [(RtlError("bad spec"), 2), (RtlRuntimeError("2 trial(s) errored"), 1),
                                      (KeyboardInterrupt(), 130)])
def test_exit_codes(exc, code, monkeypatch, capsys, tmp_path) -> None:
    import rtl.sweep.cli as sweep_cli

    def boom(args):
        raise exc

    monkeypatch.setattr(sweep_cli, "_status", boom)
    rc, err = _exit(["sweep", "status", str(tmp_path)], capsys)
    assert rc == code
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ---- rtl ui: loopback unless the user names a host ------------------------------------------------


@pytest.fixture
def ui_calls(monkeypatch, tmp_path):
    import rtl.sweep.cli as sweep_cli

    (tmp_path / "mlflow.db").write_bytes(b"")
    calls: list[list[str]] = []
    status = {"rc": 0}

    def fake_call(cmd, *a, **k):
        calls.append(cmd)
        return status["rc"]

    monkeypatch.setattr(sweep_cli.subprocess, "call", fake_call)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return calls, status, tmp_path


def _host_of(cmd: list[str]) -> str:
    return cmd[cmd.index("--host") + 1]


def test_ui_listens_on_loopback_by_default(ui_calls, capsys) -> None:
    calls, _, ws = ui_calls
    rc, err = _exit(["ui", "--workspace", str(ws)], capsys)
    assert rc == 0 and _host_of(calls[0]) == "127.0.0.1" and "warning" not in err


def test_ui_on_another_host_warns(ui_calls, capsys) -> None:
    calls, _, ws = ui_calls
    rc, err = _exit(["ui", "--workspace", str(ws), "--host", "0.0.0.0", "--port", "5001"], capsys)
    assert rc == 0 and _host_of(calls[0]) == "0.0.0.0" and calls[0][-1] == "5001"
    assert "warning" in err and "0.0.0.0:5001" in err


def test_ui_server_failure_is_exit_1(ui_calls, capsys) -> None:
    calls, status, ws = ui_calls
    status["rc"] = 1
    rc, err = _exit(["ui", "--workspace", str(ws)], capsys)
    assert rc == 1 and "port 5000" in err


# ---- ensure_ray: local = loopback, cluster = unchanged (no Ray started here) ----------------------


@pytest.fixture
def fake_ray(monkeypatch):
    import ray
    from ray._private import ray_constants

    import rtl.raystart as rs

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(rs, "_started_cluster", lambda: None)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")  # Ray's Linux default: interface address
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls, ray_constants, rs


@pytest.mark.parametrize("ray_address_env", [None, "local"])
def test_local_ray_is_forced_onto_loopback(fake_ray, monkeypatch, ray_address_env) -> None:
    calls, consts, rs = fake_ray
    if ray_address_env:
        monkeypatch.setenv("RAY_ADDRESS", ray_address_env)  # Ray's own spelling of "start a local one"
    assert rs.ensure_ray() is True
    (kw,) = calls
    assert kw["address"] == "local" and kw["_node_ip_address"] == "127.0.0.1"
    assert kw["include_dashboard"] is False and kw["dashboard_host"] == "127.0.0.1"
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and consts.ENABLE_RAY_CLUSTER is False
    # and with that flag, Ray itself resolves the node address to loopback (not the interface address)
    from ray._private.services import resolve_ip_for_localhost

    assert resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"


@pytest.mark.parametrize("how", ["flag", "env", "ray start"])
def test_joining_a_cluster_is_unchanged(fake_ray, monkeypatch, how) -> None:
    calls, consts, rs = fake_ray
    if how == "env":
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    elif how == "ray start":
        monkeypatch.setattr(rs, "_started_cluster", lambda: "10.0.0.5:6379")
    assert rs.ensure_ray("10.0.0.5:6379" if how == "flag" else None, num_cpus=2) is True
    (kw,) = calls
    assert kw["address"] == "10.0.0.5:6379" and "_node_ip_address" not in kw and "num_cpus" not in kw
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1" and consts.ENABLE_RAY_CLUSTER is True


def test_unreachable_cluster_is_a_runtime_error(fake_ray, monkeypatch) -> None:
    import ray

    _, _, rs = fake_ray

    def refuse(**kw):
        raise ConnectionError("Could not find any running Ray instance.\nmore detail")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(RtlRuntimeError, match=r"^cannot connect to Ray at 10.0.0.9:6379: Could not find") as e:
        rs.ensure_ray("10.0.0.9:6379")
    assert "\n" not in str(e.value) and e.value.exit_code == 1


def test_readme_documents_exit_codes_and_local_binds() -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    codes = next(p for p in text.split("\n\n") if p.startswith("**Exit codes**"))
    for code in ("`0`", "`1`", "`2`", "`130`"):
        assert code in codes
    net = next(p for p in text.split("\n\n") if p.startswith("**Network**"))
    assert "127.0.0.1 only" in net and "--host" in net
