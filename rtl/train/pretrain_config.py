"""`PretrainConfig`: one pretraining run, typed and checked (pydantic), torch-free.

It lives apart from rtl.train.pretrain (which imports torch) so `rtl pretrain --help`, whose options are
generated from these fields (rtl.cliargs.add_model_options), stays fast; rtl.train.pretrain re-exports it.
Every problem is an `RtlError` with one line naming the field (`epochs must be >= 1, got 0`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rtl.errors import RtlError
from rtl.train.strategies import STRATEGIES

_PATHS = ("corpus", "out", "class_weights", "joint_dir", "storage_path", "init_checkpoint")


class PretrainConfig(BaseModel):
    """One pretraining run (rtl.train.pretrain.run_pretrain / pretrain_local)."""

    model_config = ConfigDict(extra="forbid")

    corpus: str | None = Field(None, description="corpus folder (not needed for strategy scratch/imagenet)")
    strategy: str = Field("source", description="what to start from and train on (rtl.train.strategies)")
    model: str = Field("resnet18", description="backbone architecture, e.g. small_cnn, resnet18, resnet50")
    out: str = Field("pretrained", description="final checkpoint directory")
    epochs: int = Field(10, ge=1, description="training epochs")
    # a resumable prefix of the `epochs` schedule: not part of the run name, so re-running the same config
    # without it continues from that epoch on the same learning-rate schedule (rtl.sweep.candidates)
    stop_after_epoch: int | None = Field(None, ge=1, description="stop after this many epochs of the schedule "
                                         "(re-running without it continues the same run)")
    batch_size: int = Field(64, ge=1, description="global batch, split evenly across workers")
    lr: float = Field(0.1, gt=0, description="learning rate for the global batch")
    weight_decay: float = Field(1e-4, description="SGD weight decay")
    momentum: float = Field(0.9, description="SGD (Nesterov) momentum")
    warmup_epochs: float = Field(1.0, description="linear learning-rate warm-up before the cosine decay")
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs (= torch threads) per Ray Train worker")
    use_gpu: bool = Field(False, description="one GPU per Ray Train worker (nccl)")
    datasets: list[str] | None = Field(None, description="train on these corpus datasets only (a view)")
    domains: list[str] | None = Field(None, description="train on datasets with these domain tags only (a view)")
    splits: list[str] | None = Field(None, description="corpus splits to train on (default: all)")
    class_weights: str | None = Field(None, description="weights.json for strategy weighted (rtl select weights)")
    joint_dir: str | None = Field(None, description="for strategy joint: DIR/<class>/<image> folders")
    storage_path: str | None = Field(None, description="Ray Train storage (local, NFS or s3://); "
                                                       "default: ray_runs next to out")
    seed: int = Field(0, description="seed of the sample order, augmentation and init")
    samples_per_epoch: int | None = Field(None, description="images per epoch (default: rows of the view)")
    in_channels: int = Field(3, description="1 (gray) or 3 (RGB) input channels")
    min_side: int | None = Field(None, description="training crop side (default: the corpus' min_side)")
    max_side: int | None = Field(None, description="largest image side (default: the corpus' max_side)")
    max_failures: int = Field(2, description="worker failures Ray Train recovers from (restart from the "
                                             "last epoch checkpoint)")
    loader_workers: int = Field(0, description="DataLoader processes per Ray Train worker")
    # warm start: continue from this rtl checkpoint (same corpus class table) instead of the strategy's
    # init -- subset experts / subset pretraining continue the generalist (Puigcerver et al. 2021)
    init_checkpoint: str | None = Field(None, description="continue from this rtl checkpoint (same class table)")
    extra: dict[str, Any] = Field(default_factory=dict, description="chaos knobs for recovery tests")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise RtlError(_one_line(e)) from None

    @field_validator(*_PATHS, mode="before")
    @classmethod
    def _fspath(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        STRATEGIES.get(v)  # RtlError listing the valid names
        return v

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.batch_size % self.workers:
            raise RtlError(f"batch_size {self.batch_size} must be a multiple of workers {self.workers}")
        # Ray Train workers do not share the driver's working directory: make local paths absolute.
        for name in _PATHS:
            value = getattr(self, name)
            if value and "://" not in str(value):
                setattr(self, name, str(Path(value).expanduser().resolve()))
        return self

    def resolved_storage(self) -> str:
        return self.storage_path or str(Path(self.out).resolve().parent / "ray_runs")


def _one_line(e: ValidationError) -> str:
    """The first problem as the hand checks worded it: `epochs must be >= 1, got 0`."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "?"
    ctx, got = err.get("ctx") or {}, err.get("input")
    if err["type"] == "greater_than_equal":
        return f"{loc} must be >= {ctx['ge']:g}, got {got}"
    if err["type"] == "greater_than":
        return f"{loc} must be > {ctx['gt']:g}, got {got}"
    if err["type"] == "extra_forbidden":
        return f"PretrainConfig: unknown field {loc!r}"
    return f"PretrainConfig field {loc}: {err['msg']} (got {got!r})"
