"""L2-SP and DELTA: zero at the start point, growing as the weights move away from it."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from rtl.errors import RtlError
from rtl.models.backbones import create_model
from rtl.train.engine import FitConfig, fit
from rtl.train.regularizers import DELTA, L2SP, build_regularizer, channel_attention


def _perturb(model, scale):
    torch.manual_seed(123)
    with torch.no_grad():
        for p in model.stages.parameters():
            p.add_(torch.randn_like(p) * scale)


def test_l2sp_zero_at_init_and_monotone_in_distance():
    torch.manual_seed(0)
    model = create_model("small_cnn", 3)
    reg = L2SP(model, alpha=0.1, beta=0.0)
    assert reg(model).item() == 0.0
    start = {k: v.clone() for k, v in model.state_dict().items()}
    values = []
    for scale in (0.01, 0.02, 0.05, 0.1):
        model.load_state_dict(start)
        _perturb(model, scale)
        values.append(reg(model).item())
    assert values[0] > 0 and all(a < b for a, b in zip(values, values[1:]))
    # exact value: alpha/2 * ||w - w0||^2
    sq = sum((p - start[f"stages.{n}"]).pow(2).sum() for n, p in model.stages.named_parameters())
    assert reg(model).item() == pytest.approx(0.05 * sq.item(), rel=1e-5)


def test_l2sp_head_term_and_gradient():
    model = create_model("small_cnn", 3)
    reg = L2SP(model, alpha=0.0, beta=0.2)
    head_sq = sum(p.pow(2).sum() for p in model.head.parameters()).item()
    assert reg(model).item() == pytest.approx(0.1 * head_sq, rel=1e-5)
    reg = L2SP(model, alpha=1.0, beta=0.0)
    _perturb(model, 0.1)
    reg(model).backward()
    assert model.stages[0][0].weight.grad.abs().sum() > 0


def test_delta_zero_at_init_positive_after_perturbation():
    torch.manual_seed(0)
    model = create_model("small_cnn", 2)
    model.eval()  # BN in eval so features depend only on weights
    x = torch.rand(4, 3, 32, 32)
    reg = DELTA(model, stages=[1, 2, 3], alpha=1.0, beta=0.0)
    with torch.enable_grad():
        model(x)
        assert reg(model, x).item() == 0.0
    _perturb(model, 0.05)
    model(x)
    value = reg(model, x)
    assert value.item() > 0
    value.backward()
    assert model.stages[1][0].weight.grad.abs().sum() > 0
    # the frozen source copy did not move
    assert all(not p.requires_grad for p in reg.source.parameters())


def test_delta_channel_attention_and_registry():
    torch.manual_seed(0)
    model = create_model("small_cnn", 2)
    x = torch.rand(8, 3, 32, 32)
    y = torch.arange(8) % 2
    x[y == 1, 0] += 1.0
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    att = channel_attention(model, loader, [2, 3], 2)
    assert [a.shape[0] for a in att] == [64, 128]
    for a in att:
        assert torch.all(a > 0) and a.sum().item() == pytest.approx(1.0, rel=1e-5)
    reg = build_regularizer("delta", model, alpha=0.1, beta=0.0, loader=loader, num_classes=2)
    assert isinstance(reg, DELTA) and reg.has_attention and reg.stage_ids == [1, 2, 3]
    assert build_regularizer("none", model) is None
    with pytest.raises(RtlError, match="valid: delta, l2sp, none"):
        build_regularizer("nope", model)
    # the engine trains with it
    res = fit(model, loader, loader, FitConfig(epochs=2, lr=0.01), regularizer=reg)
    assert res.history[-1]["reg_loss"] > 0
