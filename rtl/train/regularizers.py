"""Fine-tuning regularisers that keep the model close to its pretrained starting point.

Every regulariser is an nn.Module called as `reg(model, images) -> scalar` right after the forward
pass of `images` through `model` (the engine does this); the result is added to the task loss.

- L2-SP (Li, Grandvalet & Davoine 2018, "Explicit inductive bias for transfer learning with CNNs"):
  alpha/2 * ||w_S - w0_S||^2 over the backbone (w0 = pretrained start) + beta/2 * ||w_head||^2.
- DELTA (Li et al. 2019, "DELTA: Deep learning transfer using feature map with attention"):
  alpha/2 * sum_stages sum_j a_j * ||FM_j(x; w) - FM_j(x; w0)||^2 (channel attention a from the
  source model, computed by `channel_attention` as in Transfer-Learning-Library's delta example) +
  beta/2 * ||w_head||^2.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtl.errors import RtlError
from rtl.registry import Registry

REGULARIZERS: Registry[Callable[..., nn.Module | None]] = Registry("regularizer")


def _bare(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _head_l2(model: nn.Module) -> Tensor:
    params = list(_bare(model).head.parameters())
    return sum((p.pow(2).sum() for p in params if p.requires_grad), torch.zeros((), device=params[0].device))


class L2SP(nn.Module):
    """alpha/2 ||w - w0||^2 over backbone (stage) params + beta/2 ||head||^2; w0 captured at construction."""

    def __init__(self, model: nn.Module, alpha: float = 0.01, beta: float = 0.01) -> None:
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)
        self.names: list[str] = []
        for name, p in _bare(model).stages.named_parameters():
            self.names.append(name)
            self.register_buffer("w0_" + name.replace(".", "__"), p.detach().clone())

    def forward(self, model: nn.Module, images: Tensor | None = None) -> Tensor:
        bare = _bare(model)
        params = dict(bare.stages.named_parameters())
        sp = torch.zeros((), device=next(bare.parameters()).device)
        for name in self.names:
            p = params[name]
            if p.requires_grad:  # frozen params equal w0 by construction
                sp = sp + (p - getattr(self, "w0_" + name.replace(".", "__"))).pow(2).sum()
        out = 0.5 * self.alpha * sp
        if self.beta:
            out = out + 0.5 * self.beta * _head_l2(model)
        return out


class DELTA(nn.Module):
    """Attention-weighted feature-map distance to a frozen copy of the source model (+ head L2).

    Feature maps of the current model are captured by forward hooks on `stages` during the engine's
    forward pass; the source model runs once more on the same images under no_grad.
    """

    def __init__(self, model: nn.Module, stages: Sequence[int] | None = None, alpha: float = 0.01,
                 beta: float = 0.01, attention: Sequence[Tensor] | None = None) -> None:
        super().__init__()
        bare = _bare(model)
        n = len(bare.stages)
        self.stage_ids = list(stages) if stages is not None else list(range(n))
        if any(not 0 <= s < n for s in self.stage_ids):
            raise RtlError(f"DELTA stages {self.stage_ids} out of range 0..{n - 1}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.source = copy.deepcopy(bare).eval()
        for p in self.source.parameters():
            p.requires_grad_(False)
        if attention is not None:
            if len(attention) != len(self.stage_ids):
                raise RtlError("DELTA needs one attention vector per chosen stage")
            for i, a in enumerate(attention):
                self.register_buffer(f"att{i}", torch.as_tensor(a, dtype=torch.float32).detach().clone())
        self.has_attention = attention is not None
        self._captured: dict[int, Tensor] = {}
        self._hooked: int | None = None
        self._handles: list = []
        self._hook(model)

    def train(self, mode: bool = True) -> DELTA:  # the source model is always in eval mode
        super().train(mode)
        self.source.eval()
        return self

    def _hook(self, model: nn.Module) -> None:
        bare = _bare(model)
        if self._hooked == id(bare):
            return
        for h in self._handles:
            h.remove()
        self._handles = []

        def make(i: int):
            def hook(_mod: nn.Module, _inp: object, out: Tensor) -> None:
                if torch.is_grad_enabled():  # only training forwards
                    self._captured[i] = out
            return hook

        for i in self.stage_ids:
            self._handles.append(bare.stages[i].register_forward_hook(make(i)))
        self._hooked = id(bare)

    def forward(self, model: nn.Module, images: Tensor) -> Tensor:
        self._hook(model)
        if not all(i in self._captured for i in self.stage_ids):
            # first call (hooks just attached) or features not captured: run the stages explicitly
            x = images
            for i, stage in enumerate(_bare(model).stages):
                x = stage(x)
                self._captured[i] = x
        with torch.no_grad():
            src = self.source.forward_stages(images)
        out = torch.zeros((), device=images.device)
        for k, i in enumerate(self.stage_ids):
            fm_t, fm_s = self._captured[i], src[i].detach()  # (B, C, H, W)
            b, c = fm_t.shape[:2]
            d2 = (fm_t.float() - fm_s.float()).reshape(b, c, -1).pow(2).mean(2)  # (B, C) mean over H*W
            if self.has_attention:
                w = getattr(self, f"att{k}").to(d2.device) * c  # attention sums to 1 -> mean weight 1
                d2 = d2 * w
            out = out + d2.sum(1).mean()
        self._captured.clear()
        out = 0.5 * self.alpha * out
        if self.beta:
            out = out + 0.5 * self.beta * _head_l2(model)
        return out


@torch.no_grad()
def channel_attention(model: nn.Module, loader: Iterable, stages: Sequence[int], num_classes: int, *,
                      device: str | torch.device = "cpu", max_batches: int = 2, temperature: float = 5.0
                      ) -> list[Tensor]:
    """DELTA channel attention from the source model: how much the target loss rises when a channel is
    removed. A linear head is first fitted on the frozen source features (LBFGS, multinomial logistic
    regression); then each channel's output is zeroed in turn. Per stage: z-score the loss increases
    and softmax(z / temperature), as in Transfer-Learning-Library's delta example. -> list of (C_i,)."""
    bare = copy.deepcopy(_bare(model)).to(device).eval()
    batches = []
    for b, (x, y) in enumerate(loader):
        if b >= max_batches:
            break
        batches.append((x.to(device), y.to(device)))
    if not batches:
        raise RtlError("DELTA attention needs at least one training batch")
    feats = torch.cat([bare.forward_features(x) for x, _ in batches])  # (N, D)
    labels = torch.cat([y for _, y in batches])
    head = nn.Linear(feats.shape[1], num_classes).to(device)
    with torch.enable_grad():
        opt = torch.optim.LBFGS(head.parameters(), max_iter=50, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(head(feats), labels) + 1e-3 * head.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    bare.head = head

    def rest(fm: Tensor, s: int) -> Tensor:  # stage-s output (B, C, H, W) -> logits (B, K)
        for stage in bare.stages[s + 1:]:
            fm = stage(fm)
        return bare.head(bare.pool(fm).flatten(1))

    out = []
    for s in stages:
        fms = [bare.forward_stages(x)[s] for x, _ in batches]  # stage-s outputs, computed once
        base = sum(F.cross_entropy(rest(fm, s), y, reduction="sum") for fm, (_, y) in zip(fms, batches))
        channels = fms[0].shape[1]
        inc = torch.empty(channels)
        for j in range(channels):  # remove channel j, measure the loss increase
            total = torch.zeros((), device=feats.device)
            for fm, (_, y) in zip(fms, batches):
                masked = fm.clone()
                masked[:, j] = 0
                total += F.cross_entropy(rest(masked, s), y, reduction="sum")
            inc[j] = (total - base) / len(labels)
        z = (inc - inc.mean()) / inc.std().clamp_min(1e-12)
        out.append(torch.softmax(z / temperature, 0))
    return out


@REGULARIZERS.register("none")
def _none(model: nn.Module, **_: object) -> None:
    return None


@REGULARIZERS.register("l2sp")
def _l2sp(model: nn.Module, *, alpha: float = 0.01, beta: float = 0.01, **_: object) -> nn.Module:
    return L2SP(model, alpha, beta)


@REGULARIZERS.register("delta")
def _delta(model: nn.Module, *, alpha: float = 0.01, beta: float = 0.01, loader: Iterable | None = None,
           num_classes: int | None = None, stages: Sequence[int] | None = None,
           device: str | torch.device = "cpu", **_: object) -> nn.Module:
    """DELTA on every stage after the stem; with a loader, channel attention is computed from it."""
    n = len(_bare(model).stages)
    stages = list(stages) if stages is not None else list(range(1, n)) or [0]
    att = None
    if loader is not None and num_classes is not None:
        att = channel_attention(model, loader, stages, num_classes, device=device)
    return DELTA(model, stages, alpha, beta, att)


def build_regularizer(name: str, model: nn.Module, **kwargs: object) -> nn.Module | None:
    """REGULARIZERS.get(name)(model, **kwargs); 'none' -> None. Build AFTER the head reset, BEFORE training."""
    return REGULARIZERS.get(name)(model, **kwargs)
