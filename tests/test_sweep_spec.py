"""Sweep spec validation: good specs load (every YAML under sweeps/), each bad field is one line naming it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from rtl.errors import ConfigError
from rtl.sweep.spec import load_resolved, load_spec, save_resolved

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"name": "x", "workspace": "ws", "corpus": "corpus", "targets": ["targets/t"]}


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "x.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in re.findall(r"\$\{(\w+)\}", path.read_text()):  # e.g. ${PGPASSWORD} in storage.optuna
        monkeypatch.setenv(var, "secret")
    spec = load_spec(path)
    assert spec.name and spec.targets and spec.budget.trials_per_target >= 1


def test_good_spec_resolves_paths(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, GOOD))
    assert spec.workspace == str(tmp_path / "ws")  # relative to the spec file
    assert spec.corpus_path() == str(tmp_path / "ws" / "corpus")  # relative to the workspace
    assert spec.results_dir == str(tmp_path / "ws" / "x")
    assert spec.optuna_url() == f"sqlite:///{tmp_path / 'ws' / 'x' / 'optuna.db'}"


@pytest.mark.parametrize("patch, field, words", [
    ({"search": {"lr": {"low": 0, "high": 1}}}, "search.lr.low", "must be > 0"),
    ({"search": {"lr": {"low": 0.1, "high": 0.01}}}, "search.lr", "high must be >= low"),
    ({"search": {"temperature": {"low": -1, "high": 2}}}, "search.temperature.low", "must be > 0"),
    ({"search": {"freeze_depth": {"low": 3, "high": 1}}}, "search.freeze_depth", "high must be >= low"),
    ({"search": {"regularizer": {"choices": ["l3"]}}}, "search.regularizer.choices", "valid: none, l2sp, delta"),
    ({"search": {"sources": {"by": "colour"}}}, "search.sources.by", "datasets"),
    ({"search": {"sources": {"include": []}}}, "search.sources.include", "at least one"),
    ({"budget": {"trials_per_target": 0}}, "budget.trials_per_target", "must be >= 1"),
    ({"budget": {"max_concurrent": 0}}, "budget.max_concurrent", "must be >= 1"),
    ({"resources": {"gpus": -1}}, "resources.gpus", "must be >= 0"),
    ({"resources": {"train_workers": 0}}, "resources.train_workers", "must be >= 1"),
    ({"scheduler": {"name": "hyperband2"}}, "scheduler.name", "valid: asha, auto, fifo, rungs"),
    ({"scheduler": {"reduction_factor": 1}}, "scheduler.reduction_factor", "must be > 1"),
    ({"scheduler": {"name": "rungs"}, "search": {"sources": {"space": "bits"}}}, "", "needs search.sources.space: ranked"),
    ({"budget": {"rungs": [0.5, 0.2, 1.0]}}, "budget.rungs", "must increase strictly"),
    ({"budget": {"rungs": [0.5, 0.9]}}, "budget.rungs", "must increase strictly"),
    ({"searcher": {"name": "grid"}}, "searcher.name", "valid: random, tpe"),
    ({"seeds": []}, "seeds", "at least 1"),
    ({"targets": []}, "targets", "at least 1"),
    ({"name": "a b"}, "name", "pattern"),
    ({"image": {"min_side": 64, "max_side": 32}}, "image", "max_side must be >= min_side"),
    ({"controls": {"imagenet": "maybe"}}, "controls.imagenet", ""),
    ({"budgets": {}}, "budgets", "unknown field"),
    ({"workspace": "s3://bucket/ws"}, "workspace", "shared by every node"),
    ({"workspace": "gs://bucket/ws", "storage": {"optuna": "sqlite:///x.db"}}, "workspace", "EFS"),
    ({"storage": {"cache": "s3://bucket/cache"}}, "storage.cache", "flock"),
    ({"name": ".."}, "name", "pattern"),
    ({"name": "."}, "name", "starting with a letter"),
    ({"name": ".hidden"}, "name", "pattern"),
    ({"name": "-x"}, "name", "pattern"),
    ({"name": "../up"}, "name", "pattern"),
    ({"corpus": "../elsewhere/corpus"}, "corpus", "escapes the workspace"),
    ({"corpus": "a/../../corpus"}, "corpus", "escapes the workspace"),
    ({"corpus": ".."}, "corpus", "escapes the workspace"),
    ({"targets": ["targets/ok", "../../etc/t"]}, "targets", "'../../etc/t' escapes the workspace"),
])
def test_bad_field_is_one_line_naming_it(tmp_path: Path, patch: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_spec(_write(tmp_path, {**GOOD, **patch}))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tmp_path / 'x.yaml'}: {field}")
    assert words in msg


def test_names_and_paths_that_stay_inside_are_accepted(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, {**GOOD, "name": "_v1.2-b", "corpus": "a/../corpus",
                                       "targets": ["t/../t2", "/abs/target"]}))
    assert spec.results_dir == str(tmp_path / "ws" / "_v1.2-b")
    assert spec.corpus_path() == str(tmp_path / "ws" / "a/../corpus")
    assert spec.target_paths() == [str(tmp_path / "ws" / "t/../t2"), "/abs/target"]  # absolute: explicit
    assert load_spec(_write(tmp_path, {**GOOD, "corpus": "/data/corpus"})).corpus_path() == "/data/corpus"


PG = "postgresql://rtl:${RTL_TEST_PW}@db.internal:5432/rtl"


def test_storage_env_vars_expand_at_use_and_never_reach_spec_json(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTL_TEST_PW", "s3cr3t-pw")
    monkeypatch.setenv("RTL_TEST_HOST", "mlflow.internal")
    spec = load_spec(_write(tmp_path, {**GOOD, "storage": {
        "optuna": PG, "tracking_uri": "http://${RTL_TEST_HOST}:5000", "cache": "$RTL_TEST_HOST/cache"}}))
    assert spec.optuna_url() == "postgresql://rtl:s3cr3t-pw@db.internal:5432/rtl"
    assert spec.tracking_uri() == "http://mlflow.internal:5000"
    assert spec.cache_dir() == "mlflow.internal/cache"
    save_resolved(spec, spec.results_dir + "/spec.json")
    text = (Path(spec.results_dir) / "spec.json").read_text()
    assert "s3cr3t-pw" not in text and json.loads(text)["storage"]["optuna"] == PG
    back = load_resolved(spec.results_dir)
    assert back.storage.optuna == PG and back.optuna_url().endswith(":s3cr3t-pw@db.internal:5432/rtl")
    # resume/status on a machine without the variable: one line naming the field and the variable
    monkeypatch.delenv("RTL_TEST_PW")
    back = load_resolved(spec.results_dir)  # trials read spec.json without needing the driver's secrets
    with pytest.raises(ConfigError) as e:
        back.optuna_url()
    assert "storage.optuna: environment variable RTL_TEST_PW is not set" in str(e.value)
    assert "\n" not in str(e.value)
    assert back.tracking_uri() == "http://mlflow.internal:5000"


def test_unset_storage_env_var_fails_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTL_TEST_PW", raising=False)
    with pytest.raises(ConfigError) as e:
        load_spec(_write(tmp_path, {**GOOD, "storage": {"optuna": PG}}))
    assert str(e.value) == f"{tmp_path / 'x.yaml'}: storage.optuna: environment variable RTL_TEST_PW is not set"
    spec = load_spec(_write(tmp_path, {**GOOD, "storage": {"optuna": "sqlite:///db.sqlite"}}))
    assert spec.optuna_url() == "sqlite:///db.sqlite"  # no variables: used verbatim


def test_missing_field_and_malformed_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"x.yaml: corpus: required field missing"):
        load_spec(_write(tmp_path, {k: v for k, v in GOOD.items() if k != "corpus"}))
    with pytest.raises(ConfigError, match=r"x.yaml:3: malformed YAML"):
        load_spec(_write(tmp_path, "name: x\nworkspace: ws\n  corpus: c\n"))
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read spec"):
        load_spec(tmp_path / "nope.yaml")
