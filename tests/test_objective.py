"""The spec chooses the objective (issue 11, item 4): the search, the best-trial choice, the verdict,
`rtl sweep status` and the report all use and name it; a spec without `objective` behaves as before;
an objective that needs an "ok" class is refused up front on a target without one."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from sweep_helpers import write_spec  # noqa: E402

from rtl.deliver.metrics import from_loss, objective_loss  # noqa: E402
from rtl.report.verdict import subset_verdict  # noqa: E402
from rtl.sweep.spec import load_resolved, load_spec, save_resolved  # noqa: E402


def _results(tmp_path: Path, **over) -> tuple[object, str]:
    """A results dir (spec.json) for a tiny bit-space sweep, without running it."""
    spec = load_spec(write_spec(tmp_path, trials=4, **over))
    save_resolved(spec, os.path.join(spec.results_dir, "spec.json"))
    return spec, spec.results_dir


def _tell(spec, trials: list[dict]) -> list[int]:
    """Ask the sweep's searcher once per entry (controls first, as the runner enqueues them) and tell it
    the given final report. -> Optuna trial numbers."""
    from rtl.sweep.runner import controls_for
    from rtl.sweep.search import OptunaAskTell

    s = OptunaAskTell(storage_url=spec.optuna_url_template(), study_name=f"{spec.name}/tgt",
                      space=spec.search.model_dump(), units=["a", "b"], n_startup_trials=2,
                      controls=controls_for(spec, ["a", "b"]))
    nums = []
    for i, result in enumerate(trials):
        cfg = s.suggest(f"t{i}")["trial"]
        s.on_trial_complete(f"t{i}", {"epoch": 2, "finished": True} | result)
        nums.append(cfg["number"])
    return nums


# macro F1 and top-1 error disagree: trial 2 has the lower val error, trial 3 the higher val macro F1
SEARCHED = [{"val_error": 0.10, "objective_loss": 1 - 0.55, "val_macro_f1": 0.55, "test_error": 0.12,
             "test_macro_f1": 0.50},
            {"val_error": 0.20, "objective_loss": 1 - 0.80, "val_macro_f1": 0.80, "test_error": 0.22,
             "test_macro_f1": 0.78}]
CONTROLS = [{"val_error": 0.40, "objective_loss": 1 - 0.45, "val_macro_f1": 0.45, "test_error": 0.4,
             "test_macro_f1": 0.44},  # scratch
            {"val_error": 0.30, "objective_loss": 1 - 0.60, "val_macro_f1": 0.60, "test_error": 0.3,
             "test_macro_f1": 0.58}]  # uniform


@pytest.mark.parametrize("name, value", [("error", 0.2), ("macro_f1", 0.7), ("balanced_error", 0.3),
                                         ("defect_recall", 0.9), ("auroc", 0.95)])
def test_objective_loss_is_minimised_and_reads_back(name: str, value: float) -> None:
    loss = objective_loss(name, value)
    assert from_loss(name, loss) == pytest.approx(value)
    better = value + 0.05 if name in ("macro_f1", "defect_recall", "auroc") else value - 0.05
    assert objective_loss(name, better) < loss  # a better metric is a lower loss for every objective


@pytest.fixture
def no_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """`rtl sweep status` cross-checks MLflow; these tests have no MLflow runs to compare with."""
    monkeypatch.setattr("rtl.sweep.status.mlflow_disagreement", lambda *a: None)


def test_best_trial_is_best_on_val_macro_f1_not_val_error(tmp_path: Path, no_mlflow: None) -> None:
    from rtl.sweep.search import open_study
    from rtl.sweep.status import best_searched, format_status, sweep_status

    spec, results = _results(tmp_path, objective="macro_f1")
    nums = _tell(spec, CONTROLS + SEARCHED)
    best = best_searched(results, "tgt")
    assert best.number == nums[3]  # the best val macro F1, although trial nums[2] has the lower val error
    study = open_study(spec.optuna_url(), f"{spec.name}/tgt")
    assert study.best_trial.number == nums[3] and study.best_value == pytest.approx(1 - 0.80)
    assert best.user_attrs["rtl.val_error"] == 0.20 and best.user_attrs["rtl.test_macro_f1"] == 0.78
    row = sweep_status(results)[0]
    assert row["objective"] == "macro_f1" and row["best_val"] == pytest.approx(0.80) and row["best_trial"] == nums[3]
    assert "best val macro F1" in format_status([row])


def test_spec_without_objective_behaves_as_before(tmp_path: Path, no_mlflow: None) -> None:
    """A spec.json written before objectives existed (no `objective`): val error, as today; resumable."""
    from rtl.sweep.status import best_searched, format_status, sweep_status

    spec, results = _results(tmp_path)
    path = Path(results) / "spec.json"
    data = json.loads(path.read_text())
    for k in ("objective", "max_false_alarm", "ok_class"):
        data.pop(k)
    path.write_text(json.dumps(data))
    old = load_resolved(results)
    assert old.objective == "error" and old.model_dump() == load_resolved(results).model_dump()
    # trials of such a sweep report no objective_loss: val_error is what is minimised
    nums = _tell(old, [{k: v for k, v in r.items() if k in ("val_error", "test_error")} for r in CONTROLS + SEARCHED])
    assert best_searched(results, "tgt").number == nums[2]  # the lowest val error
    row = sweep_status(results)[0]
    assert row["best_val"] == pytest.approx(0.10) and "best val error" in format_status([row])


def test_verdict_compares_on_the_objective_with_the_same_two_sigma_rule() -> None:
    best, gen, alls = [0.90, 0.92], [0.70, 0.71], [0.74, 0.75]
    v = subset_verdict(best, gen, alls, subset="a", objective="macro_f1")
    assert v["chosen"] and v["margins"]["generalist"] == pytest.approx(0.205)
    assert "macro F1" in v["message"]
    # the same numbers as errors: the subset is the worst of the three, the better reference is recommended
    e = subset_verdict(best, gen, alls, subset="a")
    assert not e["chosen"] and e["recommend"] == "generalist"
    # within 2 sigma of seed noise on the objective: no subset named
    noisy = subset_verdict([0.80, 0.60], gen, alls, subset="a", objective="auroc")
    assert not noisy["chosen"] and noisy["recommend"] == "all sources" and "AUROC" in noisy["message"]


def test_fit_reports_the_selected_epochs_val_metrics() -> None:
    """Per epoch `val_<m>`; `best_val_<m>` = the epoch selected on val error (what ASHA sees per epoch)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from rtl.deliver.metrics import inspection_metrics
    from rtl.models.backbones import create_model
    from rtl.train.engine import FitConfig, fit

    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    y = torch.arange(16) % 2
    x[y == 1, :, :16] += 1.0
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    calls = []

    def vm(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        calls.append(len(labels))
        m = inspection_metrics(labels, probs, ["ok", "bad"], "ok")
        return {k: m[k] for k in ("macro_f1", "auroc")}

    res = fit(create_model("small_cnn", 2), loader, loader, FitConfig(epochs=3, lr=0.05), val_metrics=vm)
    assert calls == [16, 16, 16]
    h = res.history
    assert all(0 <= e["val_macro_f1"] <= 1 and "val_auroc" in e for e in h)
    sel = h[res.best_epoch]
    assert h[-1]["best_val_macro_f1"] == sel["val_macro_f1"] and h[-1]["best_val_auroc"] == sel["val_auroc"]


def _no_ok_class(target: Path) -> None:
    """Rename the helper target's classes ok/bad to a/b: no ok class any more."""
    p = target / "labels.csv"
    p.write_text(p.read_text().replace(",ok\n", ",a\n").replace(",bad\n", ",b\n"))


@pytest.mark.parametrize("objective", ["defect_recall", "auroc"])
def test_objective_needing_an_ok_class_is_refused_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], objective: str) -> None:
    from rtl.cli import main
    from rtl.sweep import runner

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("side effect")

    monkeypatch.setattr("rtl.raystart.ensure_ray", boom)
    monkeypatch.setattr(runner, "tracker_for", boom)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ws = tmp_path / "ws"
    path = write_spec(ws, trials=4, objective=objective)
    _no_ok_class(ws / "targets" / "tgt")
    before = {str(p) for p in ws.rglob("*")}
    assert main(["sweep", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rtl: error: {path}: objective: {objective} needs an ok") and "\n" not in err
    assert "tgt (a, b)" in err
    assert {str(p) for p in ws.rglob("*")} == before  # no results dir, no database
    # the same target is fine for an objective that needs no ok class
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(spec | {"objective": "macro_f1"}))
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    # ok_class names one explicitly; a name that is no class of the target is refused too
    path.write_text(yaml.safe_dump(spec | {"ok_class": "a"}))
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    path.write_text(yaml.safe_dump(spec | {"ok_class": "good"}))
    assert main(["sweep", "run", str(path), "--dry-run"]) == 2
    assert "ok_class: 'good' is not a class of target(s) tgt" in capsys.readouterr().err


def test_unknown_objective_is_one_line(tmp_path: Path) -> None:
    from rtl.errors import ConfigError

    path = write_spec(tmp_path, objective="f2")
    with pytest.raises(ConfigError, match=r"objective: unknown objective 'f2'; valid: auroc, balanced_error, "
                                          r"defect_recall, error, macro_f1"):
        load_spec(path)


def test_tiny_sweep_optimises_macro_f1_and_names_it(tmp_path: Path, ray_session) -> None:
    """One tiny sweep with `objective: macro_f1`: every finished trial's Optuna value is 1 - its val macro F1
    (logged to MLflow per epoch and at the end), the best trial is the one with the best val macro F1,
    and status and report name the objective."""
    from rtl.report.sweep import write_report
    from rtl.sweep.runner import run_sweep
    from rtl.sweep.status import best_searched, format_status, sweep_status, target_trials
    from rtl.sweep.trial import tracker_for

    spec = load_spec(write_spec(tmp_path, trials=3, objective="macro_f1", scheduler={"name": "fifo"},
                                controls={"scratch": True, "uniform": False, "importance": False, "imagenet": False}))
    results = run_sweep(spec)
    runs = {r.data.tags["rtl.trial_id"]: r for r in tracker_for(spec).trial_runs("tgt")}
    done = [t for t in target_trials(results, "tgt") if t.state.name == "COMPLETE"]
    assert len(done) == 3
    for t in done:
        m = runs[t.user_attrs["rtl.tune_trial_id"]].data.metrics
        assert t.value == pytest.approx(1 - m["final_val_macro_f1"]) and "val_auroc" in m and "val_macro_f1" in m
        assert t.user_attrs["rtl.val_error"] == pytest.approx(m["final_val_error"])
        assert math.isfinite(t.user_attrs["rtl.test_macro_f1"])
    best = best_searched(results, "tgt")
    searched = [t for t in done if not t.user_attrs.get("rtl.control")]
    assert best.value == min(t.value for t in searched)
    assert "best val macro F1" in format_status(sweep_status(results))
    md = Path(write_report(results, log_mlflow=False)).read_text()
    assert "Objective: **macro F1**" in md and "| strategy | val macro F1 | test macro F1 |" in md
