"""The one training loop, shared by pretraining (inside Ray Train DDP workers), fine-tuning and sweeps.

- Optimiser: SGD (momentum, Nesterov) or AdamW; two learning rates (backbone = lr * backbone_lr_mult,
  head = lr: the usual fine-tuning recipe, e.g. Kornblith et al. 2019, "Do better ImageNet models
  transfer better?"); weight decay only on weights with p.dim() >= 2 (no decay on BN/bias).
- Schedule: linear warm-up then cosine decay (Loshchilov & Hutter 2017), stepped every iteration.
- Mixed precision (autocast + GradScaler) and channels_last only on CUDA.
- Model selection on the validation error only; the best weights are kept (early stopping with patience).

Batches are `(images float (B, C, H, W), labels long (B,))`. The model may be DDP-wrapped: engine
functions call `model(x)` (so DDP syncs gradients) and unwrap `model.module` only to read structure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtl.errors import RtlError

OnEpoch = Callable[[int, dict[str, Any]], bool | None]


@dataclass
class FitConfig:
    epochs: int = 10
    lr: float = 1e-2
    backbone_lr_mult: float = 1.0
    weight_decay: float = 1e-4
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: bool = True  # used only on CUDA
    channels_last: bool = True  # used only on CUDA
    patience: int | None = None  # epochs without val-error improvement before stopping; None = never
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise RtlError(f"epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            raise RtlError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in ("sgd", "adamw"):
            raise RtlError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_error: float = math.inf
    best_state: dict[str, Tensor] | None = None
    stopped_early: bool = False


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel (same parameters)."""
    return getattr(model, "module", model)


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0) -> list[dict]:
    """Trainable params split into backbone/head x decay/no-decay groups (decay only for p.dim() >= 2).

    Backbone = `model.stages` when the model has stages; anything else counts as head.
    """
    bare = unwrap(model)
    backbone_ids = {id(p) for p in bare.stages.parameters()} if hasattr(bare, "stages") else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in bare.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in backbone_ids, p.dim() >= 2), []).append(p)
    out = []
    for (is_backbone, decay), params in sorted(groups.items()):
        g_lr = lr * (backbone_lr_mult if is_backbone else 1.0)
        out.append({"params": params, "lr": g_lr, "initial_lr": g_lr,
                    "weight_decay": weight_decay if decay else 0.0, "name": f"{'backbone' if is_backbone else 'head'}"
                    f"{'' if decay else '_nodecay'}"})
    if not out:
        raise RtlError("nothing to train: every parameter is frozen")
    return out


def build_optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_mult)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: FitConfig, steps_per_epoch: int):
    """Per-iteration LambdaLR: linear warm-up over warmup_epochs, then cosine to 0 at the last step."""
    total = max(1, cfg.epochs * max(1, steps_per_epoch))
    warm = int(round(cfg.warmup_epochs * max(1, steps_per_epoch)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _to_device(x: Tensor, y: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _all_reduce(t: Tensor, sync: bool) -> Tensor:
    if sync and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


def train_epoch(
    model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, scheduler: Any = None, *,
    regularizer: nn.Module | None = None, scaler: torch.amp.GradScaler | None = None,
    device: str | torch.device = "cpu", label_smoothing: float = 0.0, grad_clip: float | None = None,
    channels_last: bool = False, sync: bool = False,
) -> dict[str, float]:
    """One pass over `loader`. AMP is on iff `scaler` is given (CUDA only). Scheduler steps per iteration.

    `regularizer(model, images) -> scalar` is added to the loss. `sync=True` all-reduces the loss sums
    across DDP ranks (every rank must call it). Returns {"train_loss": mean loss (w/o reg), "n": images}.
    """
    device = torch.device(device)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    reg_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = torch.zeros((), dtype=torch.float64, device=device)
    use_amp = scaler is not None and device.type == "cuda"
    for x, y in loader:
        x, y = _to_device(x, y, device, channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(x)  # (B, K)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            reg = regularizer(model, x) if regularizer is not None else None
        total = loss if reg is None else loss + reg.float()
        if not torch.isfinite(total):
            raise RtlError(f"training diverged (loss={total.item():.3g}): lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        if use_amp:
            scaler.scale(total).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        b = y.shape[0]
        loss_sum += loss.detach().double() * b
        if reg is not None:
            reg_sum += reg.detach().double() * b
        n += b
    stats = _all_reduce(torch.stack([loss_sum, reg_sum, n]), sync).cpu()
    count = max(1.0, stats[2].item())
    return {"train_loss": stats[0].item() / count, "reg_loss": stats[1].item() / count, "n": int(stats[2].item())}


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu", num_classes: int | None = None,
    channels_last: bool = False, sync: bool = False,
) -> dict[str, Any]:
    """Top-1 error, mean CE loss, per-class accuracy (nan for classes absent from `loader`) and the
    confusion matrix (rows = true class, columns = predicted). `sync=True` sums over DDP ranks."""
    device = torch.device(device)
    model.eval()
    conf: Tensor | None = None
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = _to_device(x, y, device, channels_last)
        logits = model(x).float()  # (B, K)
        k = num_classes or logits.shape[1]
        if conf is None:
            conf = torch.zeros(k, k, dtype=torch.float64, device=device)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        pred = logits.argmax(1)
        conf += torch.bincount(y * k + pred, minlength=k * k).reshape(k, k).double()
    if conf is None:
        if num_classes is None:
            raise RtlError("cannot evaluate on an empty loader without num_classes")
        conf = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    conf = _all_reduce(conf, sync)
    loss_sum = _all_reduce(loss_sum, sync)
    conf_np = conf.cpu().numpy().astype(np.int64)
    n = int(conf_np.sum())
    correct = int(np.trace(conf_np))
    rows = conf_np.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(rows > 0, np.diag(conf_np) / np.maximum(rows, 1), np.nan)
    return {
        "error": 1.0 - correct / n if n else math.nan,
        "loss": loss_sum.item() / n if n else math.nan,
        "per_class_accuracy": per_class.tolist(),
        "confusion": conf_np.tolist(),
        "n": n,
    }


def _state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def fit(
    model: nn.Module, train_loader: Any, val_loader: Any, cfg: FitConfig, *,
    regularizer: nn.Module | None = None, on_epoch: OnEpoch | None = None,
) -> FitResult:
    """Train for cfg.epochs, evaluate on val after every epoch, keep the best-on-val weights.

    Best = lowest (val error, val loss); early stopping counts epochs without a lower val error.
    `on_epoch(epoch, metrics)` returning True stops training (Ray Tune / ASHA, Ray Train reporting).
    The model is left holding its last weights; `FitResult.best_state` holds the best ones (CPU).
    """
    device = torch.device(cfg.device)
    on_cuda = device.type == "cuda"
    channels_last = cfg.channels_last and on_cuda
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if regularizer is not None:
        regularizer.to(device)
    try:
        steps = len(train_loader)
    except TypeError:
        steps = 1
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and on_cuda else None
    res = FitResult()
    best_key = (math.inf, math.inf)
    since_improved = 0
    for epoch in range(cfg.epochs):
        tr = train_epoch(model, train_loader, optimizer, scheduler, regularizer=regularizer, scaler=scaler,
                         device=device, label_smoothing=cfg.label_smoothing, grad_clip=cfg.grad_clip,
                         channels_last=channels_last)
        ev = evaluate(model, val_loader, device=device, channels_last=channels_last)
        improved_error = ev["error"] < res.best_val_error
        key = (ev["error"], ev["loss"])
        if key < best_key:
            best_key = key
            res.best_epoch, res.best_val_error = epoch, ev["error"]
            res.best_state = _state_copy(model)
        since_improved = 0 if improved_error else since_improved + 1
        metrics = {"epoch": epoch, "train_loss": tr["train_loss"], "reg_loss": tr["reg_loss"],
                   "val_error": ev["error"], "val_loss": ev["loss"], "lr": optimizer.param_groups[-1]["lr"],
                   "best_val_error": res.best_val_error, "best_epoch": res.best_epoch}
        res.history.append(metrics)
        stop = bool(on_epoch(epoch, dict(metrics))) if on_epoch is not None else False
        if not stop and cfg.patience is not None and since_improved >= cfg.patience:
            stop = True
        if stop:
            res.stopped_early = epoch < cfg.epochs - 1
            break
    return res
