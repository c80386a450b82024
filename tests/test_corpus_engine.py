"""`rtl corpus build --engine auto|local|ray` (issue 13): the local process pool builds the same corpus as
Ray tasks, picks Ray only when one is addressed or running, and fails in one line."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtl.data import corpus_build, corpus_local
from rtl.data.corpus import build_corpus, open_corpus
from rtl.errors import RtlError

SIDES = {"min_side": 32, "max_side": 40}
SAME = ("version", "classes", "counts_before", "counts_after", "empty_classes", "size_hist_before",
        "size_hist_after", "rejects", "warnings", "n_images_in", "n_images_kept", "n_images_ok", "n_rows_out")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, make_dataset, tiny_family) -> list[Path]:
    """A JPEG set with a class over the cap (ok: 10, cap 5) and a corrupt image in the class under it,
    and the gray film_a set (PNG)."""
    root = tmp_path_factory.mktemp("engine")
    mixed = make_dataset(root / "mixed", "mixed", classes=("ok", "short"), per_class={"ok": 10, "short": 3},
                         fmt="jpg")
    bad = sorted((mixed / "images" / "short").iterdir())[0]
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 3)
    film = root / "film_a"
    shutil.copytree(tiny_family["film_a"], film)
    return [mixed, film]


def _rows(corpus: Path) -> list[dict]:
    rows = open_corpus(corpus).table().to_pylist()
    return sorted(rows, key=lambda r: (r["dataset"], r["source_path"], r["patch"]))


def test_local_and_ray_build_the_same_corpus(sources, tmp_path, ray_session, capfd):
    local = build_corpus(sources, tmp_path / "local", cap=5, engine="local", progress=True, **SIDES)
    err = capfd.readouterr().err
    ray = build_corpus(sources, tmp_path / "ray", cap=5, engine="ray", progress=False, **SIDES)
    assert {k: local[k] for k in SAME} == {k: ray[k] for k in SAME}
    assert _rows(tmp_path / "local") == _rows(tmp_path / "ray")  # pixels included
    # what the fixture planted is in both: the corrupt JPEG listed once, the cap applied, gray kept gray
    assert [r["path"] for r in local["rejects"]] == ["images/short/" + sorted(
        p.name for p in (sources[0] / "images" / "short").iterdir())[0]]
    ok_id = next(c["id"] for c in local["classes"] if c["dataset"] == "mixed" and c["label"] == "ok")
    assert local["counts_before"][str(ok_id)] == 10 and local["counts_after"][str(ok_id)] == 5
    assert {r["channels"] for r in _rows(tmp_path / "local") if r["dataset"] == "film_a"} == {1}
    t = local["timings"]
    assert t["engine"] == "local" and ray["timings"]["engine"] == "ray"
    assert "ray_init" not in t and "ray_init" in ray["timings"]
    assert t["decode_workers"] >= 1 and t["decode_task_seconds"] > 0 and t["process"] > 0
    assert f"/{local['n_images_kept']} images" in err.strip().splitlines()[-1]  # progress lines
    assert not list((tmp_path / "local").glob(".building-*"))


def test_cli_local_engine_forks_without_importing_ray(sources, tmp_path):
    """The CLI path as a user runs it: auto with no Ray around -> local (fork), and Ray is never imported."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path)  # no `ray start` bootstrap file there
    code = ("import sys, json; from rtl.cli import main; rc = main(sys.argv[1:]); "
            "print(json.dumps({'rc': rc, 'ray': 'ray' in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code, "corpus", "build", *map(str, sources), "--out",
                           str(tmp_path / "c"), "--cap", "5", "--min-side", "32", "--max-side", "40", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0, "ray": False}, proc.stderr
    assert "local engine" in proc.stdout
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["timings"]["engine"] == "local" and m["timings"]["local_start_method"] == "fork"
    assert m["n_images_ok"] == m["n_images_kept"] - 1 and len(m["rejects"]) == 1  # the corrupt JPEG


def test_auto_picks_ray_only_when_one_is_addressed_or_running(tmp_path, monkeypatch):
    class FakeRay:
        up = False

        @classmethod
        def is_initialized(cls) -> bool:
            return cls.up

    asked = []
    monkeypatch.setitem(sys.modules, "ray", FakeRay)
    monkeypatch.setattr(corpus_build, "_started_cluster", lambda: asked.append(1) or "127.0.0.1:6379")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert corpus_build.pick_engine("auto") == "local" and not asked  # no bootstrap file: Ray not asked
    assert corpus_build.pick_engine("auto", "10.0.0.1:6379") == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "local")  # Ray's own word for "start one here"
    assert corpus_build.pick_engine("auto") == "local"
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert corpus_build.pick_engine("auto") == "ray"
    assert corpus_build.pick_engine("local") == "local"  # explicit engines are kept as given
    monkeypatch.delenv("RAY_ADDRESS")
    FakeRay.up = True
    assert corpus_build.pick_engine("auto") == "ray"
    FakeRay.up = False
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6379")  # what `ray start` leaves
    assert corpus_build.pick_engine("auto") == "ray" and asked
    with pytest.raises(RtlError, match="--engine must be auto, local or ray, got 'gpu'"):
        corpus_build.pick_engine("gpu")


def test_bootstrap_file_is_where_ray_looks(tmp_path, monkeypatch):
    from ray._common.utils import get_ray_address_file

    for env in ({}, {"TMPDIR": str(tmp_path / "t")}, {"RAY_TMPDIR": str(tmp_path / "r"), "TMPDIR": "/x"}):
        monkeypatch.delenv("TMPDIR", raising=False)
        monkeypatch.delenv("RAY_TMPDIR", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert corpus_build._ray_address_file() == get_ray_address_file(None), env


def test_cli_engine_choices(capsys):
    from rtl.cli import main

    with pytest.raises(SystemExit) as e:
        main(["corpus", "build", "ds", "--out", "c", "--engine", "gpu"])
    assert e.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["corpus", "build", "--help"])
    assert "--engine {auto,local,ray}" in capsys.readouterr().out


def _die(unit: dict, *args) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    return {}


def test_failed_unit_or_dead_worker_is_one_line(sources, tmp_path):
    plan = corpus_build._plan(sources, corpus_build.ClassTable(), 5, 0)
    units = corpus_build._units(plan[4], plan[5], 2, 40)
    params = {**SIDES, "cap": 5, "seed": 0, "keep_gray": True, "max_patches": 8, "max_downscale": 8.0,
              "min_defect_px": 6.0, "max_pixels": 64_000_000}
    pool = corpus_local.LocalPool(2)
    with pytest.raises(RtlError, match="a decode task failed: .*No such file") as e:
        pool.run(corpus_build._process_unit, units, (params, str(tmp_path / "gone")), progress=False,
                 n_images=len(plan[4]))
    assert "\n" not in str(e.value)
    with pytest.raises(RtlError, match="a decode worker process died") as e:
        pool.run(_die, units, (), progress=False, n_images=len(plan[4]))
    assert "\n" not in str(e.value)
    assert not multiprocessing.active_children()  # no worker left behind


def _stuck(unit: dict, flag: str) -> dict:
    Path(flag, str(os.getpid())).touch()
    time.sleep(120)  # a unit that takes long (a huge image): Ctrl-C must not wait for it
    return {}


def test_ctrl_c_stops_the_workers_and_leaves_nothing(sources, tmp_path, monkeypatch):
    real_wait = corpus_local.cf.wait

    def ctrl_c_once_busy(*a, **k):
        deadline = time.monotonic() + 60
        while not any(tmp_path.iterdir()) and time.monotonic() < deadline:  # a worker is in its unit
            real_wait(a[0], timeout=0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus_local.cf, "wait", ctrl_c_once_busy)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        corpus_local.LocalPool(2).run(_stuck, [{"uid": 0}, {"uid": 1}], (str(tmp_path),), progress=False,
                                      n_images=2)
    assert any(tmp_path.iterdir()) and time.monotonic() - t0 < 30  # stopped the busy workers
    assert not multiprocessing.active_children()

    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        build_corpus(sources, out, cap=5, engine="local", progress=False, **SIDES)
    assert not multiprocessing.active_children()
    assert not out.exists()  # an interrupted first build leaves no folder (no .building-*)
