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
StateCallback = Callable[[int, dict[str, Any]], None]  # (epoch, resumable state)
# (labels (N,) int, softmax probs (N, K)) -> {metric name: value}; fit logs each as `val_<name>` per epoch
ValMetrics = Callable[[np.ndarray, np.ndarray], dict[str, float]]


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
    channels_last: bool = False, sync: bool = False, keep_probs: bool = False,
) -> dict[str, Any]:
    """Top-1 error, mean CE loss, per-class accuracy (nan for classes absent from `loader`) and the
    confusion matrix (rows = true class, columns = predicted). `sync=True` sums over DDP ranks.
    `keep_probs` (single process only) also returns "labels" (N,) and softmax "probs" (N, K) as NumPy,
    for metrics that need scores (AUROC, recall at a false-alarm rate)."""
    device = torch.device(device)
    model.eval()
    conf: Tensor | None = None
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    ys: list[np.ndarray] = []
    ps: list[np.ndarray] = []
    for x, y in loader:
        x, y = _to_device(x, y, device, channels_last)
        logits = model(x).float()  # (B, K)
        if keep_probs:
            ps.append(torch.softmax(logits, 1).cpu().numpy())
            ys.append(y.cpu().numpy())
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
    out = {
        "error": 1.0 - correct / n if n else math.nan,
        "loss": loss_sum.item() / n if n else math.nan,
        "per_class_accuracy": per_class.tolist(),
        "confusion": conf_np.tolist(),
        "n": n,
    }
    if keep_probs:
        k = conf_np.shape[0]
        out["labels"] = np.concatenate(ys).astype(np.int64) if ys else np.zeros(0, np.int64)
        out["probs"] = np.concatenate(ps) if ps else np.zeros((0, k), np.float32)
    return out


def _state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def _to_cpu(obj: Any) -> Any:
    """Deep copy of a (nested) state dict with every tensor on CPU (safe to torch.save / pickle)."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG a training epoch draws from: torch (CPU + CUDA), numpy, python `random`, and the train
    loader's shuffling generator. Plain tensors / lists / ints only, so `torch.load(weights_only=True)` works."""
    import random

    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_name, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(np_pos), int(np_gauss),
                  float(np_cached)],
        "python": [py_version, list(py_internal), py_gauss],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loader": generator.get_state() if generator is not None else None,
    }
    return out


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of `rng_state` (CUDA states only when the device count matches)."""
    import random

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if generator is not None and state.get("loader") is not None:
        generator.set_state(state["loader"])


# FitConfig fields that must match between the run that saved a resume state and the one resuming it
# (they shape the optimiser and the schedule); `device`, `amp`, `channels_last` may differ.
_RESUME_FIELDS = ("epochs", "lr", "backbone_lr_mult", "weight_decay", "optimizer", "momentum", "warmup_epochs",
                  "label_smoothing", "grad_clip", "patience")


def _loader_generator(loader: Any) -> torch.Generator | None:
    gen = getattr(loader, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def fit(
    model: nn.Module, train_loader: Any, val_loader: Any, cfg: FitConfig, *,
    regularizer: nn.Module | None = None, on_epoch: OnEpoch | None = None,
    resume_state: dict[str, Any] | None = None, state_callback: StateCallback | None = None,
    val_metrics: ValMetrics | None = None,
) -> FitResult:
    """Train for cfg.epochs, evaluate on val after every epoch, keep the best-on-val weights.

    `val_metrics(labels, probs)` adds metrics of the val predictions to every epoch's record as
    `val_<name>`, and the selected epoch's as `best_val_<name>` (selection itself stays on val error).

    Best = lowest (val error, val loss); early stopping counts epochs without a lower val error.
    `on_epoch(epoch, metrics)` returning True stops training (Ray Tune / ASHA, Ray Train reporting).
    The model is left holding its last weights; `FitResult.best_state` holds the best ones (CPU).

    Exact resume: `state_callback(epoch, state)` is called after every epoch (before `on_epoch`) with a
    CPU copy of everything the next epoch depends on — model, optimizer, scheduler, AMP scaler, history,
    best weights / scores, patience counter and every RNG (torch, CUDA, numpy, python, the train loader's
    generator). Passing that dict back as `resume_state` continues with epoch `state["epoch"] + 1` and
    gives the same history and weights as an uninterrupted run (same data, same FitConfig). While a
    `state_callback` is set, the RNGs are restored after the callbacks so that what they do (logging,
    reporting) cannot perturb training — otherwise a resumed run would diverge from a straight one.
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
    loader_gen = _loader_generator(train_loader)
    res = FitResult()
    best_key = (math.inf, math.inf)
    since_improved = 0
    start = 0
    if resume_state is not None:
        saved = resume_state.get("config", {})
        bad = [k for k in _RESUME_FIELDS if k in saved and saved[k] != getattr(cfg, k)]
        if bad:
            raise RtlError(f"resume state was saved with a different training config ({', '.join(bad)} differ)")
        unwrap(model).load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        res.history = [dict(h) for h in resume_state["history"]]
        res.best_epoch = int(resume_state["best_epoch"])
        res.best_val_error = float(resume_state["best_val_error"])
        res.best_state = _to_cpu(resume_state["best_state"]) if resume_state["best_state"] is not None else None
        best_key = tuple(float(v) for v in resume_state["best_key"])  # type: ignore[assignment]
        since_improved = int(resume_state["since_improved"])
        start = int(resume_state["epoch"]) + 1
        set_rng_state(resume_state["rng"], loader_gen)
        if resume_state.get("stopped"):
            res.stopped_early = bool(resume_state.get("stopped_early"))
            start = cfg.epochs  # the saved run had already stopped (patience): nothing left to do
    for epoch in range(start, cfg.epochs):
        tr = train_epoch(model, train_loader, optimizer, scheduler, regularizer=regularizer, scaler=scaler,
                         device=device, label_smoothing=cfg.label_smoothing, grad_clip=cfg.grad_clip,
                         channels_last=channels_last)
        ev = evaluate(model, val_loader, device=device, channels_last=channels_last,
                      keep_probs=val_metrics is not None)
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
        if val_metrics is not None:
            metrics.update({f"val_{k}": float(v) for k, v in val_metrics(ev["labels"], ev["probs"]).items()})
        res.history.append(metrics)
        if val_metrics is not None:  # the selected epoch's values (records of older runs may lack them)
            best = next((h for h in res.history if h["epoch"] == res.best_epoch), {})
            metrics.update({f"best_{k}": v for k, v in best.items() if k.startswith("val_")
                            and k not in ("val_error", "val_loss")})
        patience_stop = cfg.patience is not None and since_improved >= cfg.patience
        rng = None
        if state_callback is not None:
            rng = rng_state(loader_gen)
            state_callback(epoch, {
                "epoch": epoch, "model": _state_copy(model), "optimizer": _to_cpu(optimizer.state_dict()),
                "scheduler": _to_cpu(scheduler.state_dict()), "scaler": scaler.state_dict() if scaler else None,
                "history": [dict(h) for h in res.history], "best_epoch": res.best_epoch,
                "best_val_error": res.best_val_error, "best_key": [float(v) for v in best_key],
                "best_state": res.best_state, "since_improved": since_improved, "rng": rng,
                "stopped": patience_stop, "stopped_early": patience_stop and epoch < cfg.epochs - 1,
                "config": {k: getattr(cfg, k) for k in _RESUME_FIELDS},
            })
        stop = bool(on_epoch(epoch, dict(metrics))) if on_epoch is not None else False
        if rng is not None:
            set_rng_state(rng, loader_gen)
        if stop or patience_stop:
            res.stopped_early = epoch < cfg.epochs - 1
            break
    return res
