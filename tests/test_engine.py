"""The training loop (fit / train_epoch / evaluate) and checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from rtl.errors import RtlError
from rtl.models.backbones import create_model
from rtl.train.checkpoint import load_checkpoint, save_checkpoint
from rtl.train.engine import FitConfig, build_optimizer, build_scheduler, evaluate, fit, param_groups


def _separable(n=48, seed=0):
    """Class = which half of the image is bright: trivially separable for a CNN."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.2
    y = torch.arange(n) % 2
    x[y == 0, :, :16] += 0.8
    x[y == 1, :, 16:] += 0.8
    return x, y


def _loaders(n=48):
    x, y = _separable(n)
    xv, yv = _separable(16, seed=1)
    g = torch.Generator().manual_seed(0)
    return (DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g),
            DataLoader(TensorDataset(xv, yv), batch_size=16))


def test_fit_overfits_separable_problem_and_keeps_best_state():
    torch.manual_seed(0)
    model = create_model("small_cnn", 2)
    train, val = _loaders()
    seen = []
    res = fit(model, train, val, FitConfig(epochs=6, lr=0.05, warmup_epochs=1),
              on_epoch=lambda e, m: seen.append(e) and False)
    errors = [h["val_error"] for h in res.history]
    assert seen == list(range(6))
    assert min(errors) == 0.0 and res.best_val_error == 0.0
    assert errors[res.best_epoch] == min(errors)
    assert res.history[0]["train_loss"] > res.history[-1]["train_loss"]
    # the kept state reproduces the best val error
    model.load_state_dict(res.best_state)
    assert evaluate(model, val)["error"] == res.best_val_error


def test_best_state_is_a_copy_not_the_last_weights():
    torch.manual_seed(0)
    model = create_model("small_cnn", 2)
    train, val = _loaders()
    res = fit(model, train, val, FitConfig(epochs=2, lr=0.05))
    best = res.best_state
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert not torch.equal(best["head.weight"], model.state_dict()["head.weight"].cpu())


def test_early_stopping_and_callback_stop():
    torch.manual_seed(0)
    model = create_model("small_cnn", 2)
    train, val = _loaders()
    # lr tiny -> val error cannot improve after epoch 0 -> stops after `patience` more epochs
    res = fit(model, train, val, FitConfig(epochs=20, lr=1e-9, patience=2))
    assert len(res.history) == 3 and res.stopped_early
    res = fit(model, train, val, FitConfig(epochs=20, lr=0.01), on_epoch=lambda e, m: e == 1)
    assert len(res.history) == 2 and res.stopped_early


def test_evaluate_confusion_and_per_class():
    model = torch.nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 2))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [1.0, 0]])
    y = torch.tensor([0, 0, 1, 1])
    ev = evaluate(model, [(x, y)], num_classes=3)
    assert ev["confusion"] == [[2, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert ev["error"] == 0.25
    assert ev["per_class_accuracy"][:2] == [1.0, 0.5] and math.isnan(ev["per_class_accuracy"][2])


def test_param_groups_decay_and_backbone_lr():
    model = create_model("small_cnn", 2)
    model.freeze(1)
    groups = {g["name"]: g for g in param_groups(model, lr=0.1, weight_decay=0.5, backbone_lr_mult=0.1)}
    assert groups["backbone"]["lr"] == pytest.approx(0.01) and groups["head"]["lr"] == 0.1
    assert groups["backbone_nodecay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 0.5
    assert all(p.dim() >= 2 for p in groups["backbone"]["params"] + groups["head"]["params"])
    trained = {id(p) for g in groups.values() for p in g["params"]}
    assert not any(id(p) in trained for p in model.stages[0].parameters())


def test_warmup_then_cosine_per_iteration():
    model = torch.nn.Linear(2, 2)
    cfg = FitConfig(epochs=4, lr=1.0, warmup_epochs=1, weight_decay=0)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.05


def test_checkpoint_round_trip(tmp_path):
    model = create_model("small_cnn", 3, in_channels=1, head="adapt")
    path = save_checkpoint(tmp_path / "ck", model, {"corpus_version": "abc", "epoch": 2, "history": [{"a": 1}]})
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == "small_cnn" and meta["num_classes"] == 3 and meta["in_channels"] == 1
    assert meta["corpus_version"] == "abc"
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp dirs left
    # overwrite in place
    save_checkpoint(path, create_model("small_cnn", 3, in_channels=1, head="adapt"), {"epoch": 3})
    assert load_checkpoint(path)[1]["epoch"] == 3
    # create_model(weights=<checkpoint>) loads the trunk, resets the head for another class count
    m5 = create_model("small_cnn", 5, in_channels=1, weights=str(path))
    assert m5(x).shape == (2, 5)


def test_checkpoint_failure_mid_save_leaves_nothing(tmp_path, monkeypatch):
    model = create_model("small_cnn", 2)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", model, {})
    assert list(tmp_path.iterdir()) == []
    # an existing checkpoint survives a failed overwrite
    monkeypatch.undo()
    save_checkpoint(tmp_path / "ck", model, {"epoch": 1})
    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", model, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ck")[1]["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_corrupt_or_missing_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(RtlError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    path = save_checkpoint(tmp_path / "ck", create_model("small_cnn", 2), {})
    (path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(RtlError, match="model.pt unreadable") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(RtlError, match="meta.json unreadable"):
        load_checkpoint(path)
