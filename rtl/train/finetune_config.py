"""`FinetuneConfig`: one fine-tuning run's settings, without torch.

Its own module so `rtl finetune --help` (whose options are generated from this model by
`rtl.cliargs.add_model_options`) does not import torch; `rtl.train.finetune` re-exports it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rtl.artifacts.trial import RegularizerName
from rtl.artifacts.validation import validated


class FinetuneConfig(BaseModel):
    """One fine-tuning run. `init`: checkpoint directory | "scratch" | "imagenet" (then `model` names the net)."""

    model_config = ConfigDict(extra="forbid")

    target: str
    init: str = "scratch"
    model: str = "small_cnn"
    in_channels: Literal[1, 3] = 3  # for scratch / imagenet; a checkpoint brings its own
    head: str = "linear"
    lr: float = Field(1e-2, gt=0)
    backbone_lr_mult: float = Field(1.0, ge=0)
    freeze_depth: int = Field(0, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    epochs: int = Field(20, ge=1)
    patience: int | None = Field(None, ge=1)
    reg: RegularizerName = "none"
    reg_alpha: float = Field(0.01, ge=0)
    reg_beta: float = Field(0.01, ge=0)
    probe: bool = False
    seed: int = 0
    batch_size: int = Field(32, ge=1)
    min_side: int | None = Field(None, ge=8)  # None: the checkpoint's corpus sides, else a per-model default
    max_side: int | None = Field(None, ge=8)
    device: str = "cpu"
    num_workers: int = Field(0, ge=0)
    keep_state: bool = False  # return the selected weights in FinetuneResult.model_state
    # train on these train-split image paths only (rtl.data.subsample: nested target sizes); val/test unchanged
    train_subset: list[str] | None = None

    @classmethod
    def parse(cls, data: dict[str, Any] | FinetuneConfig, source: str = "finetune config") -> FinetuneConfig:
        return validated(cls, data, lambda loc, msg: f"{source}: field {loc}: {msg}")
