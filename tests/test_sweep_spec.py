"""Sweep spec validation: good specs load (every YAML under sweeps/), each bad field is one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rtl.errors import ConfigError
from rtl.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"name": "x", "workspace": "ws", "corpus": "corpus", "targets": ["targets/t"]}


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "x.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_loads(path: Path) -> None:
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
    ({"scheduler": {"name": "hyperband2"}}, "scheduler.name", "valid: asha, fifo"),
    ({"scheduler": {"reduction_factor": 1}}, "scheduler.reduction_factor", "must be > 1"),
    ({"searcher": {"name": "grid"}}, "searcher.name", "valid: random, tpe"),
    ({"seeds": []}, "seeds", "at least 1"),
    ({"targets": []}, "targets", "at least 1"),
    ({"name": "a b"}, "name", "pattern"),
    ({"image": {"min_side": 64, "max_side": 32}}, "image", "max_side must be >= min_side"),
    ({"controls": {"imagenet": "maybe"}}, "controls.imagenet", ""),
    ({"budgets": {}}, "budgets", "unknown field"),
    ({"workspace": "s3://bucket/ws"}, "(top level)", "storage.optuna is required"),
])
def test_bad_field_is_one_line_naming_it(tmp_path: Path, patch: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_spec(_write(tmp_path, {**GOOD, **patch}))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tmp_path / 'x.yaml'}: {field}")
    assert words in msg


def test_missing_field_and_malformed_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"x.yaml: corpus: required field missing"):
        load_spec(_write(tmp_path, {k: v for k, v in GOOD.items() if k != "corpus"}))
    with pytest.raises(ConfigError, match=r"x.yaml:3: malformed YAML"):
        load_spec(_write(tmp_path, "name: x\nworkspace: ws\n  corpus: c\n"))
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read spec"):
        load_spec(tmp_path / "nope.yaml")
