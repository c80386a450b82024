"""Exact fine-tune resume: a run interrupted after epoch k and resumed from the state captured then ends
with the same history and weights as an uninterrupted run (what a restarted Tune trial relies on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from rtl.errors import RtlError
from rtl.models.backbones import create_model
from rtl.train.engine import FitConfig, fit
from rtl.train.finetune import FinetuneConfig, run_finetune


class Killed(Exception):
    """Stands in for SIGKILL of the trial process after an epoch was checkpointed."""


@pytest.fixture(scope="module")
def target(tiny_family):
    """2 classes, 6/2/2 images per class, 32-40 px so train crops are random (read-only, shared)."""
    return tiny_family["target_pcb"]


def _cfg(target) -> FinetuneConfig:
    # momentum + warm-up + cosine: optimizer and scheduler state both matter; batch 4 -> 3 steps/epoch
    return FinetuneConfig(target=str(target), init="scratch", model="small_cnn", lr=0.05, epochs=4, batch_size=4,
                          warmup_epochs=1, min_side=32, max_side=40, seed=3, keep_state=True)


def _interrupted(run, stop_after: int):
    """Run `run(state_callback, on_epoch)` until epoch `stop_after` was checkpointed, then 'kill' it."""
    saved: dict[int, dict] = {}

    def on_epoch(epoch, _m):
        if epoch == stop_after:
            raise Killed

    with pytest.raises(Killed):
        run(lambda e, st: saved.__setitem__(e, st), on_epoch)
    return saved[stop_after]


def _round_trip(state: dict, path) -> dict:
    """Through disk exactly like the Tune checkpoint (weights_only load: no pickled code)."""
    torch.save(state, path)
    return torch.load(path, weights_only=True)


def test_finetune_resume_matches_uninterrupted_run(target, tmp_path):
    cfg = _cfg(target)
    straight = run_finetune(cfg, state_callback=lambda e, st: None)
    assert len(straight.history) == 4

    state = _round_trip(_interrupted(lambda sc, oe: run_finetune(cfg, oe, state_callback=sc), 1), tmp_path / "s.pt")
    assert state["epoch"] == 1 and len(state["history"]) == 2
    torch.manual_seed(123)  # a restarted process starts from unrelated RNG states
    np.random.seed(123)
    seen: list[int] = []
    resumed = run_finetune(cfg, lambda e, m: seen.append(e), resume_state=state, state_callback=lambda e, st: None)

    assert seen == [2, 3]  # only epochs 3-4 ran
    assert len(resumed.history) == 4
    for a, b in zip(straight.history, resumed.history):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-6), (a["epoch"], k)
    assert resumed.val_error == straight.val_error and resumed.best_epoch == straight.best_epoch
    assert resumed.test_error == straight.test_error
    for k, v in straight.model_state.items():
        assert torch.allclose(v.float(), resumed.model_state[k].float(), atol=1e-6), k


def _loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 32, 32, generator=g)
    y = torch.arange(24) % 2
    x[y == 1, :, :16] += 0.8
    return (DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)),
            DataLoader(TensorDataset(x[:8], y[:8]), batch_size=8))


def test_fit_resume_restores_last_weights_optimizer_and_schedule(tmp_path):
    cfg = FitConfig(epochs=4, lr=0.05, warmup_epochs=1)
    torch.manual_seed(0)
    straight_model = create_model("small_cnn", 2)
    init = {k: v.clone() for k, v in straight_model.state_dict().items()}
    straight = fit(straight_model, *_loaders(), cfg, state_callback=lambda e, st: None)

    def run(sc, oe):
        m = create_model("small_cnn", 2)
        m.load_state_dict(init)
        torch.manual_seed(0)
        fit(m, *_loaders(), cfg, state_callback=sc, on_epoch=oe)

    torch.manual_seed(0)
    state = _round_trip(_interrupted(run, 2), tmp_path / "f.pt")
    model = create_model("small_cnn", 2)  # fresh weights: the state must bring them
    res = fit(model, *_loaders(), cfg, resume_state=state, state_callback=lambda e, st: None)
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    assert [h["lr"] for h in res.history] == pytest.approx([h["lr"] for h in straight.history], abs=1e-9)
    assert [h["train_loss"] for h in res.history] == pytest.approx([h["train_loss"] for h in straight.history],
                                                                   abs=1e-6)
    for k, v in straight_model.state_dict().items():  # last weights, not only the best ones
        assert torch.allclose(v.float(), model.state_dict()[k].float(), atol=1e-6), k


def test_resume_with_a_different_schedule_is_refused(tmp_path):
    saved = {}
    model = create_model("small_cnn", 2)
    fit(model, *_loaders(), FitConfig(epochs=1, lr=0.05), state_callback=lambda e, st: saved.setdefault(e, st))
    with pytest.raises(RtlError, match="epochs"):
        fit(create_model("small_cnn", 2), *_loaders(), FitConfig(epochs=3, lr=0.05), resume_state=saved[0])
