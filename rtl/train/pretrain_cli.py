"""`rtl pretrain`: pretrain a backbone on the corpus (or a view / weighting of it) with Ray Train.

    rtl pretrain --corpus corpus/ --backbone resnet18 --epochs 10 --workers 2 --out ckpt/src
    rtl pretrain --corpus corpus/ --strategy weighted --class-weights weights.json --out ckpt/w
    rtl pretrain --corpus corpus/ --strategy subset --domains pcb --backbone small_cnn --local --out ckpt/pcb

Options and defaults come from `PretrainConfig` (rtl/train/pretrain_config.py), the one place they live.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rtl.cliargs import (
    add_model_options,
    deprecated,
    device,
    model_kwargs,
    nonneg_float,
    nonneg_int,
    on_first_use,
    positive_int,
    resolve_device,
    seed,
    side,
)
from rtl.errors import RtlError

# stricter parse-time checks than the model's (a value the model accepts from code, e.g. 0 samples per
# epoch of an empty rung, is still a typo on the command line)
_OVERRIDES = {
    "out": {"required": True, "metavar": "CKPT"},
    "corpus": {"metavar": "CORPUS"},
    "class_weights": {"metavar": "WEIGHTS_JSON"},
    "joint_dir": {"metavar": "DIR"},
    "init_checkpoint": {"metavar": "CKPT"},
    "weight_decay": {"type": nonneg_float}, "momentum": {"type": nonneg_float},
    "warmup_epochs": {"type": nonneg_float}, "samples_per_epoch": {"type": positive_int},
    "in_channels": {"type": int, "choices": (1, 3)}, "seed": {"type": seed},
    "min_side": {"type": side}, "max_side": {"type": side},
    "max_failures": {"type": nonneg_int}, "loader_workers": {"type": nonneg_int},
}
_RENAME = {"model": "--backbone", "storage_path": "--storage", "splits": "--split"}


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrain", help="train a backbone on your corpus (or part of it), Ray Train",
                              description=__doc__)
    on_first_use(p, _add_options)
    p.set_defaults(func=cmd_pretrain)


def _add_options(p: argparse.ArgumentParser) -> None:
    from rtl.train.pretrain_config import PretrainConfig
    from rtl.train.strategies import STRATEGIES

    view = p.add_mutually_exclusive_group()
    p.set_defaults(_fields=add_model_options(
        p, PretrainConfig, rename=_RENAME, exclude=("use_gpu", "extra"),
        overrides={**_OVERRIDES, "strategy": {"choices": STRATEGIES.names()}},
        groups={"datasets": view, "domains": view}))
    p.add_argument("--device", type=device, default="cpu",
                   help="cpu, cuda (one GPU per Ray Train worker, nccl) or auto (cuda when this machine has one)")
    p.add_argument("--local", action="store_true", help="single process, no Ray (debugging / baseline)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    deprecated(p, "--model", "--backbone")
    deprecated(p, "--domain", "--domains")
    deprecated(p, "--gpu", "--device cuda", value="cuda")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from rtl.train.checkpoint import read_meta
    from rtl.train.pretrain import PretrainConfig, pretrain_local, run_pretrain

    if args.datasets and args.domains:
        raise RtlError("--datasets and --domains each choose a corpus view: give one")
    dev = "cpu" if args.local and args.device == "auto" else resolve_device(args.device)
    if args.local and (args.workers != 1 or dev != "cpu"):
        raise RtlError("--local runs one CPU process: drop --workers/--device")
    cfg = PretrainConfig(**model_kwargs(args, args._fields), use_gpu=dev.startswith("cuda"))
    from rtl.train.progress import EpochProgress  # a bar on a terminal, else one line per epoch

    progress = None if getattr(args, "quiet", False) else EpochProgress(cfg.epochs, desc="pretrain")
    try:
        out = (pretrain_local if args.local else run_pretrain)(cfg, on_epoch=progress)
    finally:
        if progress is not None:
            progress.close()
    meta = read_meta(out)
    last = meta["history"][-1] if meta["history"] else {}
    loss = f"  train_loss {last['train_loss']:.4f}" if last else ""
    print(f"checkpoint {out}  strategy {meta['strategy']}  epochs {meta['epoch']}{loss}")
    if os.environ.get("MLFLOW_TRACKING_URI"):  # params, per-epoch metrics and the checkpoint itself
        from rtl.artifacts.tracking import log_standalone_run

        run_id = log_standalone_run("rtl-pretrain", f"{meta['strategy']}:{Path(out).name}",
                                    params=meta["config"], history=meta["history"],
                                    final={"train_loss": last.get("train_loss")}, artifact_dirs=[str(out)])
        print(f"MLflow run {run_id}")
    return 0
