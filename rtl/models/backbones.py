"""Backbones: one `Backbone` shape (stages + pooled features + head) for every architecture.

Why stages: transfer-learning knobs (freeze depth, DELTA feature maps, per-stage learning rates) all
talk about "the first k blocks" of a network (Yosinski et al. 2014, "How transferable are features in
deep neural networks?"). Every backbone therefore exposes `stages: nn.ModuleList` in input order.

Stage layout:
- small_cnn: 4 stages, each conv3x3-BN-ReLU (+2x2 max-pool in stages 0-2); ~100k params; 32-64 px.
- resnet18/34/50 (torchvision): stage0 = stem (conv1, bn1, relu, maxpool), stage1..4 = layer1..layer4,
  so `freeze(1)` freezes the stem only and `freeze(5)` the whole trunk.
- timm/<name> (only when timm is importable): the whole timm trunk is ONE stage (freeze 0 or 1).

ImageNet weights are never downloaded: they are read from $RTL_IMAGENET_WEIGHTS (a file) or the torch hub
cache (`torch.hub.get_dir()/checkpoints/<torchvision file name>`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rtl.artifacts.checkpoint import MODEL_FILE, read_checkpoint_meta, read_state_dict
from rtl.errors import RtlError
from rtl.registry import Registry

BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")
HEADS: Registry[Callable[[int, int], nn.Module]] = Registry("head")


# ----------------------------------------------------------------------------------------- heads
@HEADS.register("linear")
def linear_head(feature_dim: int, num_classes: int) -> nn.Module:
    return nn.Linear(feature_dim, num_classes)


class AdaptHead(nn.Sequential):
    """Oquab et al. 2014 ("Learning and transferring mid-level image representations using CNNs"):
    two adaptation FC layers on top of the transferred trunk — FCa (+ReLU + dropout) then FCb (classifier)."""

    def __init__(self, feature_dim: int, num_classes: int, hidden: int = 512, dropout: float = 0.5) -> None:
        super().__init__(
            nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )


@HEADS.register("adapt")
def adapt_head(feature_dim: int, num_classes: int) -> nn.Module:
    return AdaptHead(feature_dim, num_classes)


# -------------------------------------------------------------------------------------- backbone
class Backbone(nn.Module):
    """stages (in order, stages[0] holds the stem) -> global average pool -> head."""

    def __init__(
        self, name: str, stages: list[nn.Module], feature_dim: int, num_classes: int, *,
        in_channels: int = 3, head: str = "linear",
    ) -> None:
        super().__init__()
        self.name = name
        self.in_channels = in_channels
        self.head_name = head
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.head = HEADS.get(head)(feature_dim, num_classes)
        self.frozen_depth = 0

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Output of every stage, (B, C_i, H_i, W_i) each (used by DELTA)."""
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        for stage in self.stages:  # (B, C, H, W) -> ... -> (B, feature_dim, h, w)
            x = stage(x)
        if x.dim() == 4:
            x = self.pool(x).flatten(1)
        return x  # (B, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.stages.parameters())

    def freeze(self, depth: int) -> None:
        """Freeze exactly stages[:depth] (no grad, BN statistics fixed); everything after, and the head, trains."""
        if not 0 <= depth <= len(self.stages):
            raise RtlError(f"freeze depth {depth} out of range for {self.name}: use 0..{len(self.stages)}")
        for i, stage in enumerate(self.stages):
            for p in stage.parameters():
                p.requires_grad_(i >= depth)
        for p in self.head.parameters():
            p.requires_grad_(True)
        self.frozen_depth = depth
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        """Like nn.Module.train, but frozen stages stay in eval (BN running stats are not updated)."""
        super().train(mode)
        for stage in self.stages[: self.frozen_depth]:
            stage.eval()
        return self

    def reset_head(self, num_classes: int, head: str = "linear") -> None:
        device = next(self.parameters()).device
        self.head = HEADS.get(head)(self.feature_dim, num_classes).to(device)
        self.head_name = head
        self.num_classes = num_classes
        self.head.train(self.training)


# ------------------------------------------------------------------------------------- small_cnn
def _conv_bn_relu(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@BACKBONES.register("small_cnn")
def small_cnn(num_classes: int, *, in_channels: int = 3, head: str = "linear") -> Backbone:
    """4 stages (16-32-64-128 channels): ~100k params, fast on CPU for 32-64 px inputs."""
    widths = [16, 32, 64, 128]
    stages, cin = [], in_channels
    for i, w in enumerate(widths):
        stages.append(_conv_bn_relu(cin, w, pool=i < 3))
        cin = w
    return Backbone("small_cnn", stages, widths[-1], num_classes, in_channels=in_channels, head=head)


# ---------------------------------------------------------------------------------------- resnet
def _resnet_factory(name: str) -> Callable[..., Backbone]:
    def build(num_classes: int, *, in_channels: int = 3, head: str = "linear", tv_state: dict | None = None) -> Backbone:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        if tv_state is not None:
            try:
                net.load_state_dict(tv_state)
            except RuntimeError as e:
                raise RtlError(f"imagenet weights do not fit {name}: {str(e).splitlines()[0]}") from None
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        stages = [stem, net.layer1, net.layer2, net.layer3, net.layer4]
        model = Backbone(name, stages, net.fc.in_features, num_classes, in_channels=3, head=head)
        if in_channels != 3:
            adapt_input_channels(model, in_channels)
        return model

    return build


for _n in ("resnet18", "resnet34", "resnet50"):
    BACKBONES.register(_n)(_resnet_factory(_n))


def _imagenet_candidates(name: str) -> list[str]:
    """torchvision file names of the ImageNet weights for `name` (DEFAULT first)."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    names = [os.path.basename(enum.DEFAULT.url)]
    names += [os.path.basename(w.url) for w in enum if os.path.basename(w.url) not in names]
    return names


def imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """Load torchvision ImageNet weights for `name` from a local file only (never downloads)."""
    if name not in {"resnet18", "resnet34", "resnet50"}:
        raise RtlError(f"no imagenet weights for backbone {name!r}; use one of resnet18, resnet34, resnet50")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    files = _imagenet_candidates(name)
    tried = []
    env = os.environ.get("RTL_IMAGENET_WEIGHTS")
    if env:
        tried.append(Path(env))
    tried += [hub / f for f in files]
    for path in tried:
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # corrupt / not a state dict
                raise RtlError(f"cannot read imagenet weights {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
            if not isinstance(state, dict):
                raise RtlError(f"imagenet weights {path} is not a state_dict")
            return state
    raise RtlError(
        f"imagenet weights for {name} not found (never downloaded): put {files[0]} at {hub / files[0]} "
        f"or set RTL_IMAGENET_WEIGHTS=<path to that file>"
        + (f" (RTL_IMAGENET_WEIGHTS={env} does not exist)" if env else "")
    )


# ------------------------------------------------------------------------------------------ timm
def _timm_model(name: str, num_classes: int, *, in_channels: int, head: str, pretrained: bool) -> Backbone:
    try:
        import timm
    except ImportError:
        raise RtlError(f"backbone {name!r} needs timm: pip install 'rtl[timm]'") from None

    class _Trunk(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, D) pooled
            return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    try:
        net = timm.create_model(name.split("/", 1)[1], pretrained=pretrained, num_classes=0, in_chans=in_channels)
    except Exception as e:
        raise RtlError(f"timm cannot create {name!r}: {e}".splitlines()[0]) from None
    return Backbone(name, [_Trunk(net)], net.num_features, num_classes, in_channels=in_channels, head=head)


# ---------------------------------------------------------------------------------------- public
def _first_conv(model: Backbone) -> tuple[nn.Module, str, nn.Conv2d]:
    for mod in model.stages[0].modules():
        for child_name, child in mod.named_children():
            if isinstance(child, nn.Conv2d):
                return mod, child_name, child
    raise RtlError(f"{model.name}: no input convolution to adapt")


@torch.no_grad()
def adapt_input_channels(model: Backbone, in_channels: int) -> Backbone:
    """Change the input channels of the first conv, keeping its function on gray images.

    3 -> 1: the weight is summed over input channels, so the 1-channel model on x equals the
    3-channel model on x replicated 3 times. 1 -> 3: the weight is replicated and divided by 3.
    """
    parent, attr, conv = _first_conv(model)
    if conv.in_channels == in_channels:
        model.in_channels = in_channels
        return model
    w = conv.weight  # (O, I, k, k)
    if in_channels == 1:
        new_w = w.sum(dim=1, keepdim=True)
    elif conv.in_channels == 1:
        new_w = w.repeat(1, in_channels, 1, 1) / in_channels
    else:
        raise RtlError(f"cannot adapt {conv.in_channels}-channel input conv to {in_channels} channels")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode).to(w.device, w.dtype)
    new.weight.copy_(new_w)
    if conv.bias is not None:
        new.bias.copy_(conv.bias)
    new.weight.requires_grad_(conv.weight.requires_grad)
    setattr(parent, attr, new)
    model.in_channels = in_channels
    return model


def create_model(
    name: str, num_classes: int, *, in_channels: int = 3, weights: str | None = None, head: str = "linear"
) -> Backbone:
    """Build a backbone by registry name.

    weights: None (random init) | "imagenet" (local file only, see module doc) | path to an rtl
    checkpoint directory (its trunk is loaded; the head is kept if the class count matches, else reset).
    """
    if in_channels not in (1, 3):
        raise RtlError(f"in_channels must be 1 or 3, got {in_channels}")
    HEADS.get(head)
    if name.startswith("timm/"):
        if weights not in (None, "imagenet"):
            return _from_checkpoint(name, num_classes, in_channels, weights, head)
        return _timm_model(name, num_classes, in_channels=in_channels, head=head, pretrained=weights == "imagenet")
    build = BACKBONES.get(name)
    if weights is None:
        return build(num_classes, in_channels=in_channels, head=head)
    if weights == "imagenet":
        return build(num_classes, in_channels=in_channels, head=head, tv_state=imagenet_state_dict(name))
    return _from_checkpoint(name, num_classes, in_channels, weights, head)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[Backbone, dict[str, Any]]:
    """Rebuild the network a checkpoint's `meta.json` describes and load its `model.pt` (strict).
    -> (Backbone, meta dict). The format is rtl.artifacts.checkpoint; RtlError on a bad checkpoint."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    state = read_state_dict(path, map_location=map_location)
    model = create_model(meta.model, meta.num_classes, in_channels=meta.in_channels, head=meta.head)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise RtlError(f"checkpoint {path / MODEL_FILE} does not fit {meta.model}: {str(e).splitlines()[0]}") from None
    return model, meta.as_dict()


def _from_checkpoint(name: str, num_classes: int, in_channels: int, path: str, head: str) -> Backbone:
    model, meta = load_checkpoint(path)
    if meta.get("model") != name:
        raise RtlError(f"checkpoint {path} holds a {meta.get('model')!r} model, not {name!r}")
    if model.in_channels != in_channels:
        adapt_input_channels(model, in_channels)
    if model.num_classes != num_classes or model.head_name != head:
        model.reset_head(num_classes, head)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
