"""Backbones: freeze depth, frozen BN, 1-channel conversion, local-only ImageNet weights."""

from __future__ import annotations

import pytest
import torch

from rtl.errors import RtlError
from rtl.models.backbones import BACKBONES, adapt_input_channels, create_model


def _stage_param_names(model, i):
    return {f"stages.{i}.{n}" for n, _ in model.stages[i].named_parameters()}


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_freeze_depth_freezes_exactly_the_first_stages(name):
    model = create_model(name, 3)
    n = len(model.stages)
    assert n == (4 if name == "small_cnn" else 5)
    for depth in range(n + 1):
        model.freeze(depth)
        frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
        expected = set().union(*[_stage_param_names(model, i) for i in range(depth)]) if depth else set()
        assert frozen == expected, depth
        assert all(p.requires_grad for p in model.head.parameters())
        model.train()
        for i, stage in enumerate(model.stages):
            bns = [m for m in stage.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            assert bns
            assert all(bn.training == (i >= depth) for bn in bns), (depth, i)
        assert model.head.training


def test_frozen_bn_running_stats_do_not_move():
    model = create_model("small_cnn", 2)
    model.freeze(2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    after = model.state_dict()
    for k, v in before.items():
        stage = int(k.split(".")[1])
        assert torch.equal(v, after[k]) == (stage < 2), k


def test_freeze_depth_out_of_range():
    with pytest.raises(RtlError, match="0..4"):
        create_model("small_cnn", 2).freeze(5)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_one_channel_model_equals_three_replicated_channels(name):
    torch.manual_seed(0)
    m3 = create_model(name, 4).eval()
    m1 = create_model(name, 4)
    m1.load_state_dict(m3.state_dict())
    adapt_input_channels(m1, 1)
    m1.eval()
    assert m1.in_channels == 1
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(m1(x), m3(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


def test_heads_and_reset_head():
    model = create_model("small_cnn", 3, head="adapt")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert len([m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]) == 2
    model.reset_head(7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert isinstance(model.head, torch.nn.Linear)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, model.feature_dim)


def test_registry_names_and_unknown():
    assert {"small_cnn", "resnet18", "resnet34", "resnet50"} <= set(BACKBONES.names())
    with pytest.raises(RtlError, match="valid: .*small_cnn"):
        create_model("nope", 2)
    with pytest.raises(RtlError, match="head"):
        create_model("small_cnn", 2, head="nope")


def test_imagenet_weights_absent_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RTL_IMAGENET_WEIGHTS", str(tmp_path / "missing.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(RtlError) as e:
        create_model("resnet18", 2, weights="imagenet")
    msg = str(e.value)
    assert "\n" not in msg
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "torch_home") in msg
    assert "missing.pth" in msg
    with pytest.raises(RtlError, match="no imagenet weights"):
        create_model("small_cnn", 2, weights="imagenet")


def test_imagenet_weights_loaded_from_local_file(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    monkeypatch.setenv("RTL_IMAGENET_WEIGHTS", str(tmp_path / "r18.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    model = create_model("resnet18", 5, weights="imagenet").eval()
    ref.eval()
    torch.testing.assert_close(model.stages[0][0].weight, ref.conv1.weight)
    torch.testing.assert_close(model.stages[4][1].conv2.weight, ref.layer4[1].conv2.weight)
    x = torch.rand(1, 3, 32, 32)
    ref.fc = torch.nn.Identity()
    torch.testing.assert_close(model.forward_features(x), ref(x))
    # from the hub cache too (no env var), 1-channel input = summed first conv
    monkeypatch.delenv("RTL_IMAGENET_WEIGHTS")
    hub = tmp_path / "empty" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (tmp_path / "r18.pth").rename(hub / "resnet18-f37072fd.pth")
    gray = create_model("resnet18", 5, weights="imagenet", in_channels=1)
    torch.testing.assert_close(gray.stages[0][0].weight, ref.conv1.weight.sum(1, keepdim=True))
