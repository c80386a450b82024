"""The deliverable (issue 11): model folders, `rtl finetune --out`, `rtl predict`, inspection metrics,
the MLflow registry (champion alias) and `rtl sweep export`."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sweep_helpers import write_target

from rtl.cli import main
from rtl.deliver.metrics import inspection_metrics
from rtl.deliver.model import load_model_dir, read_model_meta, save_model_dir
from rtl.errors import RtlError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch scratch fine-tune on a tiny target, kept as a model folder via `rtl finetune --out`."""
    root = tmp_path_factory.mktemp("deliver")
    tgt = write_target(root / "tgt")
    out = root / "model"
    rc = main(["finetune", "--target", str(tgt), "--init", "scratch", "--epochs", "1", "--batch-size", "4",
               "--lr", "0.05", "--out", str(out), "--json", str(root / "ft.json")])
    assert rc == 0
    return root, tgt, out


# ---- metrics -------------------------------------------------------------------------------------------
def test_inspection_metrics_hand_computed() -> None:
    classes = ["bad", "ok", "scratch"]
    y = np.array([1, 1, 1, 1, 0, 0, 2, 2])  # 4 ok, 4 defects
    # argmax: ok,ok,ok,bad | bad,ok | scratch,scratch
    p = np.array([[.1, .8, .1], [.2, .7, .1], [.3, .6, .1], [.6, .3, .1],
                  [.7, .2, .1], [.4, .5, .1], [.1, .1, .8], [.1, .45, .45001]])
    m = inspection_metrics(y, p, classes, "ok", max_false_alarm=0.0)
    assert m["error"] == pytest.approx(2 / 8)
    # recalls: bad 1/2, ok 3/4, scratch 2/2 -> balanced error 1 - 0.75
    assert m["balanced_error"] == pytest.approx(1 - (0.5 + 0.75 + 1.0) / 3)
    # F1: bad P=1/2 R=1/2 -> .5; ok P=3/4 R=3/4 -> .75; scratch P=1 R=1 -> 1
    assert m["macro_f1"] == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    assert m["defect_recall"] == pytest.approx(3 / 4)  # one "bad" called ok
    assert m["false_alarm_rate"] == pytest.approx(1 / 4)  # one ok called bad
    # defect scores 1-P(ok): ok .2 .3 .4 .7 ; defects .8 .5 .9 .55 -> pairs won: 4+3+4+3 = 14 of 16
    assert m["auroc"] == pytest.approx(14 / 16)
    # no false alarm allowed: threshold above .7 catches .8 and .9 -> 2 of 4
    assert m["defect_recall_at_far"] == pytest.approx(0.5)
    m2 = inspection_metrics(y, p, classes, None)
    assert "auroc" not in m2 and m2["error"] == m["error"]


def test_ok_class_configurable() -> None:
    from rtl.deliver.model import find_ok_class

    assert find_ok_class(["Good", "crack"]) == "Good"
    assert find_ok_class(["a", "b"]) is None
    assert find_ok_class(["pass_part", "crack"], "pass_part") == "pass_part"
    with pytest.raises(RtlError, match="ok class 'fine'"):
        find_ok_class(["a", "b"], "fine")


# ---- model folder ---------------------------------------------------------------------------------------
def test_model_folder_round_trip_and_refuses_tampering(tmp_path: Path) -> None:
    from rtl.models.backbones import create_model

    torch.manual_seed(0)
    net = create_model("small_cnn", 3, in_channels=1).eval()
    d = save_model_dir(tmp_path / "m", net, classes=["a", "ok", "c"], min_side=32, max_side=40,
                       metrics={"test_error": 0.25, "nan": math.nan}, provenance={"sweep": "s"})
    lm = load_model_dir(d)
    assert lm.classes == ["a", "ok", "c"] and lm.meta["ok_class"] == "ok"
    assert lm.preprocess["channels"] == 1 and lm.preprocess["min_side"] == 32 and len(lm.preprocess["mean"]) == 1
    assert lm.meta["metrics"]["test_error"] == 0.25 and lm.meta["metrics"]["nan"] is None  # valid JSON
    assert lm.meta["provenance"]["sweep"] == "s" and lm.meta["provenance"]["rtl_version"]
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(lm.model(x), net(x))
    # a model folder is also a checkpoint (rtl finetune --init MODEL_DIR)
    from rtl.train.checkpoint import load_checkpoint

    assert load_checkpoint(d)[1]["num_classes"] == 3

    bad = tmp_path / "edited"
    shutil.copytree(d, bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["classes"] = ["a", "b", "c"]
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RtlError, match="digest"):
        load_model_dir(bad)
    trunc = tmp_path / "trunc"
    shutil.copytree(d, trunc)
    (trunc / "model.pt").write_bytes((d / "model.pt").read_bytes()[:100])
    with pytest.raises(RtlError, match="checksum"):
        load_model_dir(trunc)
    (trunc / "meta.json").unlink()
    with pytest.raises(RtlError, match="missing meta.json"):
        load_model_dir(trunc)
    with pytest.raises(RtlError, match="not found"):
        load_model_dir(tmp_path / "nope")


def test_kept_models_order_and_prune(tmp_path: Path) -> None:
    """The champion among seeds is the lowest val error (0.0 included); pruning keeps only given trials."""
    from rtl.models.backbones import create_model
    from rtl.sweep.deliver import kept_models, models_dir, prune_models

    net = create_model("small_cnn", 2)
    root = models_dir(str(tmp_path), "t")
    for name, val, seed in (("trial_0003_seed0", 0.2, 0), ("trial_0003_seed1", 0.0, 1), ("trial_0001_seed0", 0.1, 0)):
        save_model_dir(root / name, net, classes=["bad", "ok"], min_side=32, max_side=36,
                       metrics={"val_error": val}, provenance={"seed": seed})
    (root / ".trial_0003_seed2.tmp-x").mkdir()  # left by a killed save
    assert [d.name for d, _ in kept_models(str(tmp_path), "t", 3)] == ["trial_0003_seed1", "trial_0003_seed0"]
    prune_models(str(tmp_path), "t", {3})
    assert sorted(d.name for d in root.iterdir()) == ["trial_0003_seed0", "trial_0003_seed1"]


def test_champion_is_the_recommended_reference_when_the_search_is_worse_beyond_noise(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """The registered / exported model is the one the report recommends: the best searched trial, unless the
    verdict finds it worse than the generalist (or all sources) by more than 2σ of seed noise -- then the
    reference's best seed; within the noise, or without the reference's folder, the searched one stays."""
    from types import SimpleNamespace

    import rtl.sweep.deliver as deliver
    import rtl.sweep.verdict as report
    from rtl.models.backbones import create_model
    from rtl.sweep.verdict import reference_beats_best, subset_verdict

    worse = subset_verdict([0.40, 0.42], [0.10, 0.12], [0.30, 0.31], floor=0.01)  # the search lost clearly
    close = subset_verdict([0.20, 0.24], [0.19, 0.23], [0.30, 0.31], floor=0.01)
    assert reference_beats_best(worse) == "generalist" and reference_beats_best(close) is None
    assert reference_beats_best(subset_verdict([0.40], None, [0.1, 0.12], floor=0.01)) == "uniform"
    assert reference_beats_best(subset_verdict([0.05, 0.06], [0.3, 0.31], [0.3, 0.32], floor=0.01)) is None

    def trial(number: int, value: float, control: str = "") -> SimpleNamespace:
        return SimpleNamespace(number=number, value=value, state=SimpleNamespace(name="COMPLETE"),
                               user_attrs={"rtl.control": control} if control else {})

    trials = [trial(0, 0.11, "generalist"), trial(1, 0.12, "generalist"), trial(2, 0.3, "uniform"), trial(5, 0.40)]
    monkeypatch.setattr(deliver, "target_trials", lambda rd, t: trials)
    monkeypatch.setattr(deliver, "best_searched", lambda rd, t: trials[-1])
    net = create_model("small_cnn", 2)
    root = deliver.models_dir(str(tmp_path), "t")
    for number, seed, val in ((0, 0, 0.11), (1, 1, 0.10), (2, 0, 0.3), (5, 0, 0.40)):
        save_model_dir(root / f"trial_{number:04d}_seed{seed}", net, classes=["bad", "ok"], min_side=32, max_side=36,
                       metrics={"val_error": val}, provenance={"seed": seed, "trial": number})
    spec = SimpleNamespace(results_dir=str(tmp_path))
    verdict = {"v": worse}
    monkeypatch.setattr(report, "target_verdict", lambda spec, target, s: verdict["v"])
    c = deliver.champion_choice(spec, "t", summary={})
    assert (c.control, c.number, c.seed) == ("generalist", 1, 1)  # the reference's best seed by val
    assert [d.name for d, _ in c.kept] == ["trial_0001_seed1", "trial_0000_seed0"]
    monkeypatch.setattr(report, "summarize_target", lambda rd, t: {})
    path = deliver.deliver_target(spec, "t")  # registration fails here (no MLflow): the folder still stands
    assert path is not None and path.name == "trial_0001_seed1"
    assert sorted(d.name for d in root.iterdir()) == ["trial_0000_seed0", "trial_0001_seed1", "trial_0005_seed0"]
    verdict["v"] = close
    assert deliver.champion_choice(spec, "t", summary={})[:3] == (5, 0, "")
    verdict["v"] = worse
    for d in root.glob("trial_000[01]_*"):
        shutil.rmtree(d)  # a sweep from before references kept folders: the searched trial stays champion
    assert deliver.champion_choice(spec, "t", summary={})[:3] == (5, 0, "")


# ---- finetune --out and predict --------------------------------------------------------------------------
def test_finetune_out_predict_matches_training_evaluation(trained, tmp_path: Path) -> None:
    """No train/serve skew: predict (decode -> model folder preprocessing) gives the probabilities the
    training evaluation path (TargetDataset, centre crop) gives, and the metrics saved in the folder."""
    from rtl.data.convention import load_dataset
    from rtl.deliver.finetuned import evaluate_probs
    from rtl.train.target_data import TargetDataset

    _, tgt, out = trained
    lm = load_model_dir(out)
    assert lm.meta["provenance"]["finetune"]["epochs"] == 1 and lm.meta["provenance"]["seed"] == 0
    ds = TargetDataset(load_dataset(tgt), "test", classes=lm.classes, in_channels=lm.model.in_channels,
                       min_side=lm.preprocess["min_side"], max_side=lm.preprocess["max_side"])
    y, p_train = evaluate_probs(lm.model, ds)
    preds = tmp_path / "p.csv"
    assert main(["predict", str(out), str(tgt), "--split", "test", "--out", str(preds), "--engine", "local"]) == 0
    df = pd.read_csv(preds)
    assert list(df["path"]) == ds.paths
    p_pred = df[[f"p_{c}" for c in lm.classes]].to_numpy()
    np.testing.assert_allclose(p_pred, p_train, atol=1e-6)
    assert list(df["pred"]) == [lm.classes[i] for i in p_train.argmax(1)]
    err = float((df["pred"] != df["label"]).mean())
    assert err == pytest.approx(lm.meta["metrics"]["test_error"])
    assert err == pytest.approx(lm.meta["metrics"]["test_error"])
    assert "test_auroc" in lm.meta["metrics"]
    np.testing.assert_allclose(df["defect_score"], 1 - df["p_ok"], atol=1e-6)


def test_predict_lists_corrupt_image_as_reject(trained, tmp_path: Path) -> None:
    _, tgt, out = trained
    imgs = tmp_path / "imgs"
    shutil.copytree(tgt / "images", imgs)
    (imgs / "ok" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (imgs / "empty.jpg").write_bytes(b"")
    n_good = len(list((tgt / "images").rglob("*.png")))
    preds = tmp_path / "out" / "preds.parquet"
    assert main(["predict", str(out), str(imgs), "--out", str(preds)]) == 0
    df = pd.read_parquet(preds)
    assert len(df) == n_good and "ok/broken.png" not in set(df["path"])
    rej = pd.read_csv(tmp_path / "out" / "preds.rejects.csv")
    assert sorted(rej["path"]) == ["empty.jpg", "ok/broken.png"]
    assert set(df["pred"]) <= {"ok", "bad"}
    # a CSV of paths works the same (relative to the CSV)
    (tmp_path / "list.csv").write_text("image\nimgs/ok/000.png\nimgs/bad/000.png\n")
    assert main(["predict", str(out), str(tmp_path / "list.csv"), "--out", str(tmp_path / "l.csv")]) == 0
    assert list(pd.read_csv(tmp_path / "l.csv")["path"]) == ["imgs/ok/000.png", "imgs/bad/000.png"]


def test_predict_and_finetune_bad_input(trained, tmp_path: Path, capsys) -> None:
    _, tgt, out = trained
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(out), str(tmp_path / "empty"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope"), str(tgt), "--out", str(tmp_path / "p.csv")]) == 2
    assert "model folder" in capsys.readouterr().err
    assert main(["predict", str(out), str(tgt), "--out", str(tmp_path / "p.txt")]) == 2
    assert ".csv or .parquet" in capsys.readouterr().err
    assert main(["predict", str(out), str(tgt), "--out", str(tmp_path / "p.csv"), "--ok-class", "fine"]) == 2
    assert "ok class 'fine'" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("x")
    assert main(["finetune", "--target", str(tgt), "--init", "scratch", "--epochs", "1",
                 "--out", str(tmp_path / "taken")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert (tmp_path / "taken" / "notes.txt").exists()


def test_predict_ray_data_matches_local(trained, tmp_path: Path, ray_session) -> None:
    from rtl.deliver.predict import collect_inputs, predict

    _, tgt, out = trained
    imgs = tmp_path / "imgs"
    shutil.copytree(tgt / "images", imgs)
    (imgs / "bad" / "zz.png").write_bytes(b"not an image")
    lm = load_model_dir(out)
    items = collect_inputs(imgs)
    local = predict(lm, items, engine="local", batch_size=5)
    ray_p = predict(lm, items, engine="ray", batch_size=5, actors=2)
    assert ray_p.engine == "ray" and [i.path for i in ray_p.items] == [i.path for i in local.items]
    np.testing.assert_allclose(ray_p.probs, local.probs, atol=1e-6)
    assert ray_p.rejects == local.rejects == [("bad/zz.png", local.rejects[0][1])]


# ---- MLflow registry -----------------------------------------------------------------------------------
def test_registry_champion_round_trip(trained, tmp_path: Path, monkeypatch) -> None:
    from rtl.sweep.tracking import Tracker, _fluent_uri, publish_champion

    _, tgt, out = trained
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "sw", str(tmp_path / "art"))
    pre = tracker.get_or_create_pretrain_run("k" * 64, {"mask": "a"})
    meta = read_model_meta(out)
    v = publish_champion(tracker, "tgt", str(out), meta, registered_name="sw.tgt", best_trial=3)
    # resume: the same weights are not registered twice
    assert publish_champion(tracker, "tgt", str(out), meta, registered_name="sw.tgt", best_trial=3) == v
    assert len(tracker.client.search_model_versions("name='sw.tgt'")) == 1
    assert str(tracker.client.get_model_version_by_alias("sw.tgt", "champion").version) == v

    with _fluent_uri(uri) as mlflow:  # leaves no MLFLOW_TRACKING_URI behind for later tests
        net = mlflow.pytorch.load_model("models:/sw.tgt@champion")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), load_model_dir(out).model(x).numpy(), atol=1e-6)
    # the page: model-training experiment, pretraining nested, target parent carries the metrics
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert tracker.client.get_run(pre).data.tags["mlflow.parentRunId"]
    parent = tracker.client.get_run(tracker.get_or_create_target_run("tgt"))
    assert parent.data.tags["best_trial"] == "3" and "test_error" in parent.data.metrics

    preds = tmp_path / "p.csv"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["predict", "models:/sw.tgt@champion", str(tgt), "--out", str(preds)]) == 0
    assert len(pd.read_csv(preds)) == 16
    assert main(["predict", "models:/sw.nope@champion", str(tgt), "--out", str(preds)]) == 2


# ---- sweep: keep, export, register ---------------------------------------------------------------------
def test_sweep_keeps_best_model_exports_and_registers_once(tmp_path: Path, ray_session) -> None:
    """A 2-trial sweep (scratch control + 1 searched): only the best searched trial keeps a model folder;
    export -> predict reproduces the trial's own test error; the champion is registered with its metrics
    on the target's parent run; pretraining runs are not at the top level of the experiment. (Resume
    registering no second version: test_registry_champion_round_trip.)"""
    from sweep_helpers import write_spec

    from rtl.sweep.runner import run_sweep
    from rtl.sweep.spec import load_spec
    from rtl.sweep.status import best_searched
    from rtl.sweep.trial import tracker_for

    spec = load_spec(write_spec(tmp_path, name="d", trials=2, scheduler={"name": "fifo"},
                                controls={"scratch": True, "uniform": False, "importance": False, "imagenet": False}))
    results = run_sweep(spec)
    best = best_searched(results, "tgt")
    kept = sorted(p.name for p in (Path(results) / "models" / "tgt").iterdir())
    assert kept == [f"trial_{best.number:04d}_seed0"]

    out = tmp_path / "exported"
    assert main(["sweep", "export", results, "--target", "tgt", "--out", str(out)]) == 0
    lm = load_model_dir(out)
    assert lm.meta["provenance"]["trial"] == best.number and lm.meta["provenance"]["sweep"] == "d"
    tracker = tracker_for(spec)
    run = tracker.client.get_run(lm.meta["provenance"]["mlflow_run_id"])
    preds = tmp_path / "p.csv"
    assert main(["predict", str(out), str(tmp_path / "targets" / "tgt"), "--split", "test", "--out", str(preds)]) == 0
    df = pd.read_csv(preds)
    assert float((df["pred"] != df["label"]).mean()) == pytest.approx(run.data.metrics["final_test_error"])
    assert "test_macro_f1" in run.data.metrics and "test_auroc" in run.data.metrics
    on = set(run.data.params["mask"].split(",")) if run.data.params["mask"] != "none" else set()
    assert {run.data.params["src.a"], run.data.params["src.b"]} <= {"0", "1"}
    assert {u for u in ("a", "b") if run.data.params[f"src.{u}"] == "1"} == on

    versions = tracker.client.search_model_versions("name='d.tgt'")
    assert len(versions) == 1
    top = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.`mlflow.parentRunId` IS NULL")
    kinds = sorted(r.data.tags.get("rtl.kind") for r in top)
    assert kinds == ["pretrain_group", "target"], kinds
    parent = next(r for r in top if r.data.tags["rtl.kind"] == "target")
    assert parent.data.tags["best_trial"] == str(best.number) and "val_error" in parent.data.metrics
    assert parent.data.tags["rtl.champion"] == "models:/d.tgt@champion"
    assert main(["sweep", "export", results, "--target", "nope", "--out", str(out)]) == 2
    assert main(["sweep", "export", results, "--target", "tgt", "--out", str(tmp_path / "targets")]) == 2
    assert (tmp_path / "targets" / "tgt" / "dataset.yaml").exists()  # never written over
    from rtl.report.sweep import write_report

    md = Path(write_report(results, log_mlflow=False)).read_text()
    insp = md[md.index("Inspection metrics"):]
    assert "defect = any class but `ok`" in insp and "| best (search) |" in insp and "| scratch |" in insp
    assert "AUROC" in insp and "models:/d.tgt@champion" in md


def test_finetune_shows_per_epoch_progress(trained, capsys) -> None:
    """Not a terminal (captured): one line per epoch and seed on stderr; stdout keeps the table only."""
    _, tgt, _ = trained
    assert main(["finetune", "--target", str(tgt), "--init", "scratch", "--epochs", "2", "--batch-size", "8",
                 "--seeds", "0,1"]) == 0
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("seed ")]
    assert [ln.split(" val_error")[0].split(" train_loss")[0] for ln in lines] == [
        "seed 0 epoch 1/2", "seed 0 epoch 2/2", "seed 1 epoch 1/2", "seed 1 epoch 2/2"]
    assert "epoch 1/2" not in cap.out
    assert main(["finetune", "--target", str(tgt), "--init", "scratch", "--epochs", "1", "--quiet"]) == 0
    assert "epoch" not in capsys.readouterr().err
