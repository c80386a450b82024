"""Checks before side effects (issue 12, items 8, 9, 14): a bad sweep spec fails before anything is written
or started, with every problem in one line; a sweep that never ran a trial takes a corrected spec;
`rtl sweep run --dry-run` prints the plan and writes nothing; state rtl writes is owner-only."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from rtl.cli import main
from rtl.errors import ConfigError, RtlError, RtlRuntimeError
from rtl.sweep import preflight as pf
from rtl.sweep import runner
from rtl.sweep.spec import load_spec, save_resolved

sys.path.insert(0, str(Path(__file__).parent))
from sweep_helpers import write_spec  # noqa: E402


class _Started(Exception):
    """Raised by the patched Ray start / MLflow tracker: reaching them means a side effect began."""


@pytest.fixture
def no_side_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray start and MLflow tracker raise `_Started`: a check that lets a bad spec through fails the test."""
    def boom(*a: object, **k: object) -> None:
        raise _Started("side effect")

    monkeypatch.setattr("rtl.raystart.ensure_ray", boom)
    monkeypatch.setattr(runner, "tracker_for", boom)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _spec(ws: Path, **over: object) -> Path:
    path = write_spec(ws, **over)
    return path


def _edit(path: Path, **over: object) -> Path:
    data = yaml.safe_load(path.read_text())
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    path.write_text(yaml.safe_dump(data))
    return path


def _fails_before_side_effects(path: Path, ws: Path) -> str:
    before = _tree(ws)
    ray_before = pf._in_process_ray()
    with pytest.raises(RtlError) as e:
        runner.run_sweep(load_spec(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    assert not (ws / "t").exists()  # no results dir, so no spec.json, optuna.db or mlflow.db
    assert _tree(ws) == before
    assert pf._in_process_ray() == ray_before  # Ray not started by the failed run
    return msg


@pytest.mark.parametrize("over, words", [
    ({"backbone": "resnet9000"}, ["backbone: unknown backbone 'resnet9000'", "small_cnn"]),
    ({"budget": {"trials_per_target": 2}}, ["budget.trials_per_target: 2 leaves no searched trial"]),
    ({"resources": {"cpus": float("inf")}}, ["resources.cpus: inf is not a finite number"]),
    ({"resources": {"cpus": 1, "gpus": float("inf")}}, ["resources.gpus: inf is not a finite number"]),
    ({"targets": ["targets/tgt", "targets/nope"]}, ["targets: nope: no dataset at"]),
    ({"corpus": "no_corpus"}, ["corpus: no corpus at", "no_corpus"]),
    ({"controls": {"imagenet": True}}, ["controls.imagenet: no ImageNet weights exist for backbone 'small_cnn'"]),
])
def test_bad_spec_fails_before_anything_is_written(tmp_path: Path, no_side_effects: None, over: dict,
                                                   words: list[str]) -> None:
    ws = tmp_path / "ws"
    path = _edit(_spec(ws), **over)
    msg = _fails_before_side_effects(path, ws)
    for w in words:
        assert w in msg


def test_unusable_optuna_storage_fails_before_anything_is_written(tmp_path: Path, no_side_effects: None) -> None:
    ws = tmp_path / "ws"
    path = _spec(ws)
    (tmp_path / "afile").write_text("x")
    _edit(path, storage={"optuna": f"sqlite:///{tmp_path}/afile/optuna.db"})
    assert "storage.optuna" in _fails_before_side_effects(path, ws)
    (tmp_path / "garbage.db").write_bytes(b"not a database at all" * 100)
    _edit(path, storage={"optuna": f"sqlite:///{tmp_path}/garbage.db"})
    assert "not a readable database" in _fails_before_side_effects(path, ws)
    assert (tmp_path / "garbage.db").read_bytes() == b"not a database at all" * 100


def test_unreachable_database_never_prints_the_password(tmp_path: Path, no_side_effects: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Port 1 on loopback refuses (or the driver is missing): either way one line, secret masked."""
    monkeypatch.setenv("RTL_TEST_PW", "hunter2-secret")
    ws = tmp_path / "ws"
    path = _edit(_spec(ws), storage={"optuna": "postgresql://rtl:${RTL_TEST_PW}@127.0.0.1:1/rtl"})
    msg = _fails_before_side_effects(path, ws)
    assert "storage.optuna" in msg and "hunter2-secret" not in msg and "rtl:***@127.0.0.1:1" in msg


def test_only_an_unreachable_service_is_a_runtime_error(tmp_path: Path) -> None:
    probs = pf._Problems()
    probs.add("storage.optuna: cannot connect", runtime=True)
    with pytest.raises(RtlRuntimeError):
        probs.raise_if_any("x.yaml")
    probs.add("backbone: unknown")
    with pytest.raises(ConfigError) as e:  # an input problem among them: exit 2
        probs.raise_if_any("x.yaml")
    assert str(e.value).startswith("x.yaml: 2 problems: storage.optuna: cannot connect; backbone: unknown")


def test_every_problem_is_reported_at_once(tmp_path: Path, no_side_effects: None) -> None:
    ws = tmp_path / "ws"
    path = _edit(_spec(ws), backbone="nope", budget={"trials_per_target": 1}, resources={"cpus": float("inf")},
                 targets=["targets/missing"])
    msg = _fails_before_side_effects(path, ws)
    assert msg.startswith(f"{path}: 4 problems: ")
    for field in ("targets: missing", "backbone:", "budget.trials_per_target:", "resources.cpus:"):
        assert field in msg


def test_spec_field_errors_are_all_reported(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    path = _edit(_spec(ws), budget={"batch_size": 0}, seeds=[], extra_field=1)
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    msg = str(e.value)
    assert "\n" not in msg and "3 problems" in msg
    for field in ("budget.batch_size: must be >= 1", "seeds:", "extra_field: unknown field"):
        assert field in msg


def test_more_cpus_than_this_machine_without_a_cluster(tmp_path: Path, no_side_effects: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pf, "_in_process_ray", lambda: False)  # the test session's own Ray is not "the machine"
    monkeypatch.setattr("rtl.raystart._started_cluster", lambda: None)
    ws = tmp_path / "ws"
    path = _edit(_spec(ws), resources={"cpus": 100_000})
    assert "resources.cpus: a trial needs 100000 CPUs" in _fails_before_side_effects(path, ws)
    _edit(path, resources={"cpus": 1, "gpus": 1000})
    assert "resources.gpus: a trial needs 1000 GPUs" in _fails_before_side_effects(path, ws)
    # with a cluster address the cluster (and its autoscaler) decides: accepted
    plan = pf.preflight(load_spec(path), address="ray://head:10001")
    assert "ray://head:10001" in plan.resources


def test_workspace_that_is_a_file_is_one_line(tmp_path: Path, no_side_effects: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    path = _spec(ws)
    (tmp_path / "wsfile").write_text("not a folder")
    _edit(path, workspace=str(tmp_path / "wsfile"))
    with pytest.raises(ConfigError) as e:
        runner.run_sweep(load_spec(path))
    assert str(e.value) == f"{path}: workspace: {tmp_path / 'wsfile'} is a file, not a directory"
    assert (tmp_path / "wsfile").read_text() == "not a folder"
    assert main(["sweep", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rtl: error: ") and "is a file, not a directory" in err and "\n" not in err


def test_world_writable_workspace_warns(tmp_path: Path, no_side_effects: None,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    spec = load_spec(_spec(ws))
    os.chmod(ws, 0o755)
    assert pf.preflight(spec).warnings == []
    assert "world-writable" not in capsys.readouterr().err
    os.chmod(ws, 0o777)
    plan = pf.preflight(spec)
    assert len(plan.warnings) == 1 and str(ws) in plan.warnings[0]
    err = capsys.readouterr().err
    assert "rtl: warning:" in err and "world-writable" in err and "0777" in err


def test_state_files_are_owner_only(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    spec = load_spec(_spec(ws))
    save_resolved(spec, os.path.join(spec.results_dir, "spec.json"))
    assert stat.S_IMODE(os.stat(spec.results_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(spec.results_dir, "spec.json")).st_mode) == 0o600


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path, no_side_effects: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    path = _spec(ws, trials=5)
    _edit(path, seeds=[0, 1])
    before = _tree(tmp_path)
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert _tree(tmp_path) == before  # no results dir, no optuna.db / mlflow.db created by the checks
    assert "tgt" in out and "2 datasets: a, b" in out
    assert "5 per target = 4 control + 1 searched" in out  # scratch + uniform, x 2 seeds
    assert "scratch (seed 1)" in out and "seeds 1" in out and "nothing written" in out
    _edit(path, backbone="nope")
    assert main(["sweep", "run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rtl: error: ") and "backbone" in err and "\n" not in err
    assert _tree(tmp_path) == before


def test_dry_run_says_how_the_importance_trial_pretrains(tmp_path: Path, no_side_effects: None,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """With importance candidates the plan says what one importance trial costs: n cuts and one full run."""
    path = _spec(tmp_path / "ws", trials=6)
    _edit(path, search={"sources": {"space": "ranked"}}, budget={"pretrain_epochs": 2})
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out  # the default: the specialists' chosen sources, one pretraining
    assert ("1 of them importance-weighted from scratch, each the single pretraining on the sources whose "
            "specialists probe best at T=1 (on its own mask when that leaves no unit); specialists: one per "
            "dataset, from scratch on it alone, 0.2 of the generalist's images each, on the first seed, shared "
            "by every target and seed (2 x 0.2 = 0.4 generalist pretrainings per sweep, 0.4 per target)") in out
    assert "enqueued from the ranking by specialists" in out  # auto: the candidates build them anyway
    _edit(path, search={"sources": {"space": "ranked", "importance_candidates": {
        "variants": [{"top": 3}, {"temperature": 2.0}], "cut": 0.5, "own": True}}})
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    assert ("each the best of 3 candidates (its own; top 3 at T=1; same mask at T=2), picked by probe after "
            "epoch 1 of 2") in capsys.readouterr().out
    _edit(path, search={"sources": {"space": "ranked", "importance_candidates": None}})
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    assert "candidates" not in capsys.readouterr().out  # null: one pretraining
    _edit(path, search={"sources": {"space": "ranked", "importance_candidates": {
        "variants": [{"drop": [1]}, {"drop": [1, 2], "temperature": 2.0}], "own": True}}})
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    assert ("best of 3 candidates (its own; same mask without mass leader 1 at T=1; same mask without mass "
            "leaders 1+2 at T=2)") in capsys.readouterr().out
    _edit(path, search={"sources": {"space": "ranked", "importance_candidates": {"variants": [{"drop": [1]}],
                                                                                 "cut": 0.25, "own": True}}})
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0  # a quarter of 2 epochs: 1 of 4 half epochs
    assert "picked by probe after epoch 1 of 4 (each of the 2 epochs split in 2)" in capsys.readouterr().out
    _edit(path, search={"sources": {"space": "ranked", "importance_candidates": {"variants": [{"specialists": True}],
                                                                                 "specialist_fraction": 0.2,
                                                                                 "own": True}}})
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    assert ("best of 2 candidates (its own; the sources whose specialists probe best at T=1), picked by probe "
            "after epoch 1 of 4 (each of the 2 epochs split in 2); specialists: one per dataset, from scratch on it "
            "alone, 0.2 of the generalist's images each, on the first seed, shared by every target and seed"
            ) in capsys.readouterr().out
    _edit(path, search={"sources": {"space": "ranked", "importance_candidates": {"variants": [{"specialists": True}],
                                                                                 "own": False}}})
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    assert ("each the single pretraining on the sources whose specialists probe best at T=1 (on its own mask when "
            "that leaves no unit); specialists: one per dataset") in capsys.readouterr().out
    _edit(path, search={"sources": {"space": "ranked", "importance_candidates": {"variants": [{"specialists": True}],
                                                                                 "length": 0.5}}})
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    assert ("single pretraining on the sources whose specialists probe best at T=1 (on its own mask when that "
            "leaves no unit); 0.5 of the generalist's images; specialists:") in capsys.readouterr().out
    _edit(path, search={"sources": {"space": "ranked", "importance_candidates": {"variants": [{"specialists": True}],
                                                                                 "specialist_agreement": 0.3}}})
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0  # the label agreement: said, and that it is free
    assert ("per target); + the datasets whose labels agree with the best-probed one's (kappa >= 0.3, no "
            "pretraining)") in capsys.readouterr().out
    _edit(path, search={"sources": {"space": "ranked", "importance_candidates": {"variants": [{"specialists": True}],
                                                                                 "from_specialist": True}}})
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    assert ("leaves no unit); the specialists' pick continues its best specialist for 0.8 of the generalist's "
            "images; specialists:") in capsys.readouterr().out


def _start_that_fails_at_ray(path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run until Ray would start (spec.json saved, tracker stubbed), where a dead cluster stops it."""
    class Tracker:
        def get_or_create_target_run(self, target: str) -> str:
            return target

    def dead_cluster(address: object) -> None:
        raise RtlRuntimeError("cannot connect to Ray at ray://head:10001: unreachable")

    monkeypatch.setattr(runner, "tracker_for", lambda spec: Tracker())
    monkeypatch.setattr(runner, "_init_ray", dead_cluster)
    with pytest.raises(RtlError) as e:
        runner.run_sweep(load_spec(path))
    return str(e.value)


def test_sweep_that_never_ran_a_trial_takes_a_corrected_spec(tmp_path: Path, no_side_effects: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    path = _spec(ws, trials=4)
    assert "cannot connect to Ray" in _start_that_fails_at_ray(path, monkeypatch)
    spec_json = ws / "t" / "spec.json"
    assert '"trials_per_target": 4' in spec_json.read_text()
    _edit(path, budget={"trials_per_target": 6})  # corrected: accepted, replaces spec.json
    assert "cannot connect to Ray" in _start_that_fails_at_ray(path, monkeypatch)
    assert '"trials_per_target": 6' in spec_json.read_text()

    import optuna  # one trial in the sweep's study: it started, so another spec is refused

    study = optuna.create_study(storage=load_spec(path).optuna_url(), study_name="t/tgt")
    study.enqueue_trial({"x": 1})
    _edit(path, budget={"trials_per_target": 7})
    msg = _start_that_fails_at_ray(path, monkeypatch)
    assert "different spec" in msg and "budget" in msg
    assert '"trials_per_target": 6' in spec_json.read_text()
    assert pf.preflight(load_spec(path)).started  # an existing optuna.db opens read-only


def test_sweep_with_a_tune_experiment_keeps_its_spec(tmp_path: Path, no_side_effects: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    path = _spec(ws, trials=4)
    _start_that_fails_at_ray(path, monkeypatch)
    (ws / "t" / "ray_results" / "tgt").mkdir(parents=True)
    _edit(path, budget={"trials_per_target": 5})
    assert "different spec" in _start_that_fails_at_ray(path, monkeypatch)
