"""Fine-tuning end to end on a tiny convention dataset: val selects, test only reports, seeds summarise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from rtl.data.convention import ImageRecord, write_dataset_yaml, write_labels_csv, write_splits
from rtl.errors import RtlError
from rtl.models.backbones import create_model
from rtl.train.checkpoint import save_checkpoint
from rtl.train.finetune import FinetuneConfig, run_finetune, run_finetune_seeds
from rtl.train.target_data import TargetDataset


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """2 classes ('bottom' / 'top': which half is bright), 8/4/4 images per class, 32-40 px, one gray;
    plus one corrupt file in train that must be skipped."""
    root = tmp_path_factory.mktemp("target")
    rng = np.random.default_rng(0)
    records = []
    for label in ("bottom", "top"):
        for i in range(16):
            split = "train" if i < 8 else "val" if i < 12 else "test"
            h, w = 32, int(rng.integers(32, 41))
            img = rng.integers(0, 50, (h, w, 3)).astype(np.uint8)
            half = slice(0, h // 2) if label == "top" else slice(h // 2, h)  # not "left": hflip augments
            img[half] += 180
            rel = f"images/{label}/{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0] if i == 0 else img).save(root / rel)
            records.append(ImageRecord(rel, label, split))
    (root / "images/top/bad.png").write_bytes(b"not an image")
    records.append(ImageRecord("images/top/bad.png", "top", "train"))
    write_dataset_yaml(root, name="tiny_target", domain=["test"])
    write_labels_csv(root, records)
    write_splits(root, records)
    return root


def _cfg(target, **kw):
    base = {"target": str(target), "init": "scratch", "model": "small_cnn", "lr": 0.05, "epochs": 4,
            "batch_size": 8, "min_side": 32, "max_side": 40}
    return FinetuneConfig(**{**base, **kw})


def test_target_dataset_skips_unreadable_and_crops(target):
    from rtl.data.convention import load_dataset

    info = load_dataset(target)
    with pytest.warns(UserWarning, match="skipped 1 unreadable.*bad.png"):
        ds = TargetDataset(info, "train", classes=info.classes(), in_channels=1, min_side=32, max_side=40,
                           train=True)
    assert len(ds) == 16 and ds.class_counts() == [8, 8]
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y == 0
    assert all(img.dtype == np.uint8 and 32 <= min(img.shape[:2]) for img in ds.images)


@pytest.mark.filterwarnings("ignore:.*unreadable")
def test_finetune_scratch_end_to_end_selects_on_val_only(target):
    seen = []
    res = run_finetune(_cfg(target, keep_state=True), on_epoch=lambda e, m: seen.append(m) and False)
    assert len(res.history) == 4 and [m["epoch"] for m in seen] == [0, 1, 2, 3]
    assert {"epoch", "train_loss", "val_error"} <= set(res.history[0])
    h = res.history  # best = lowest val error, ties broken by lower val loss: never test numbers
    assert res.best_epoch == min(range(len(h)), key=lambda i: (h[i]["val_error"], h[i]["val_loss"]))
    assert res.val_error == min(m["val_error"] for m in h)
    assert 0.0 <= res.test_error <= 1.0 and res.n_images == {"train": 16, "val": 8, "test": 8}
    assert set(res.per_class_accuracy) == {"bottom", "top"}
    assert res.val_error <= 0.25  # the task is easy
    assert all("test" not in k for h in res.history for k in h)  # test never seen during selection
    # the returned state is the best-on-val one: re-evaluating it on val gives val_error
    from rtl.train.engine import evaluate
    from rtl.train.finetune import _loader, load_target

    model = create_model("small_cnn", 2)
    model.load_state_dict(res.model_state)
    data = load_target(_cfg(target), 3, (32, 40))
    assert evaluate(model, _loader(data["val"], _cfg(target), shuffle=False, gen=None))["error"] == res.val_error


@pytest.mark.filterwarnings("ignore:.*unreadable")
def test_finetune_is_deterministic_under_a_seed(target):
    a = run_finetune(_cfg(target, epochs=2, seed=3))
    b = run_finetune(_cfg(target, epochs=2, seed=3))
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


@pytest.mark.filterwarnings("ignore:.*unreadable")
def test_finetune_from_checkpoint_with_freeze_and_regularisers(target, tmp_path):
    src = create_model("small_cnn", 5, in_channels=1)
    ckpt = save_checkpoint(tmp_path / "ck", src, {"min_side": 32, "max_side": 40, "corpus_version": "x"})
    for reg in ("l2sp", "delta"):
        res = run_finetune(_cfg(target, init=str(ckpt), freeze_depth=2, reg=reg, reg_alpha=0.1, epochs=2,
                                min_side=None, max_side=None, keep_state=True))
        assert len(res.history) == 2 and not math.isnan(res.val_error)
        # frozen stages are exactly the checkpoint's weights
        for k, v in src.state_dict().items():
            if k.startswith(("stages.0.", "stages.1.")):
                assert torch.equal(res.model_state[k], v), k
        assert not torch.equal(res.model_state["stages.3.0.weight"], src.state_dict()["stages.3.0.weight"])


@pytest.mark.filterwarnings("ignore:.*unreadable")
def test_linear_probe(target):
    res = run_finetune(_cfg(target, probe=True, keep_state=True))
    h = res.history
    assert len(h) == 7 and res.best_epoch == min(range(len(h)), key=lambda i: (h[i]["val_error"], h[i]["val_loss"]))
    assert res.val_error == min(h["val_error"] for h in res.history)
    assert {"C", "val_error"} <= set(res.history[0]) and 0 <= res.test_error <= 1
    # the folded-in head reproduces the probe's test predictions
    from rtl.train.engine import evaluate
    from rtl.train.finetune import _loader, load_target

    model = create_model("small_cnn", 2)
    model.load_state_dict(res.model_state)
    data = load_target(_cfg(target), 3, (32, 40))
    ev = evaluate(model, _loader(data["test"], _cfg(target), shuffle=False, gen=None))
    assert ev["error"] == pytest.approx(res.test_error)


@pytest.mark.filterwarnings("ignore:.*unreadable")
def test_seeds_mean_std_and_cli(target, tmp_path, capsys):
    summary = run_finetune_seeds(_cfg(target, epochs=2), [0, 1])
    vals = [r.val_error for r in summary.results]
    assert [r.seed for r in summary.results] == [0, 1]
    assert summary.val_mean == pytest.approx(np.mean(vals))
    assert summary.val_std == pytest.approx(np.std(vals, ddof=1))
    assert summary.test_mean == pytest.approx(np.mean([r.test_error for r in summary.results]))

    from rtl.cli import main

    out = tmp_path / "res.json"
    rc = main(["finetune", "--target", str(target), "--init", "scratch", "--epochs", "1", "--seeds", "0,1",
               "--min-side", "32", "--max-side", "40", "--batch-size", "8", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "± std" in text and "bottom" in text and "top" in text
    saved = json.loads(out.read_text())
    assert len(saved["runs"]) == 2 and "val_mean" in saved
    rc = main(["finetune", "--target", str(tmp_path / "nope"), "--init", "scratch"])
    assert rc == 2 and "rtl: error:" in capsys.readouterr().err


def test_bad_config_is_a_one_line_error(target):
    with pytest.raises(RtlError, match="field lr"):
        FinetuneConfig.parse({"target": str(target), "lr": -1})
    with pytest.raises(RtlError, match="not found"):
        run_finetune(_cfg(target, init=str(target / "no_ckpt")))


def test_cli_logs_one_mlflow_run_per_seed_when_a_tracking_uri_is_set(target, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from rtl.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rc = main(["finetune", "--target", str(target), "--init", "scratch", "--epochs", "2", "--seeds", "0,1",
               "--min-side", "32", "--max-side", "40", "--batch-size", "8", "--lr", "0.01"])
    assert rc == 0, capsys.readouterr().err
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rtl-finetune")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    for r in runs:
        assert r.data.params["lr"] == "0.01" and r.info.status == "FINISHED"
        assert {"val_error", "final_val_error", "final_test_error"} <= set(r.data.metrics)
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_error")] == [0, 1]  # per epoch
