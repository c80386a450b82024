"""`rtl finetune`: fine-tune (or linear-probe) one init on a target, over several seeds, and print a table.

    rtl finetune --target data/targets/target_pcb --init ckpt/src --seeds 0,1,2
    rtl finetune --target data/targets/target_pcb --init scratch --backbone small_cnn --epochs 5
    rtl finetune --target data/targets/target_pcb --init ckpt/src --out models/pcb   # + a model folder

Options and defaults come from `FinetuneConfig` (rtl/train/finetune.py), the one place they live.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rtl.cliargs import (
    add_model_options,
    deprecated,
    device,
    model_kwargs,
    resolve_device,
    seed_list,
    side,
)
from rtl.errors import RtlError
from rtl.train.finetune_config import FinetuneConfig

# FinetuneConfig's fields carry no descriptions (yet): their help lines live here
_HELPS = {
    "target": "target dataset folder (rtl dataset convention)",
    "init": "start point: a checkpoint directory, 'scratch' or 'imagenet'",
    "model": "backbone architecture for --init scratch/imagenet (a checkpoint brings its own)",
    "in_channels": "input channels for --init scratch/imagenet",
    "head": "classifier head: linear, or adapt (two adaptation FC layers, FCa + FCb)",
    "lr": "learning rate (the head's; the backbone's is lr x --backbone-lr-mult)",
    "backbone_lr_mult": "backbone learning rate = lr x this (0 = frozen backbone)",
    "freeze_depth": "freeze the first N stages (0 = none)",
    "weight_decay": "weight decay (0 while a --reg regulariser is on)",
    "optimizer": "optimizer",
    "warmup_epochs": "linear learning-rate warm-up before the cosine decay",
    "label_smoothing": "label smoothing of the cross-entropy",
    "epochs": "training epochs per seed",
    "patience": "stop a seed after N epochs without a better val error (default: never)",
    "reg": "regulariser towards the start point: L2-SP (Li et al. 2018) or DELTA (Li et al. 2019)",
    "reg_alpha": "--reg strength: alpha/2 x distance to the start point's weights (l2sp) or features (delta)",
    "reg_beta": "--reg: beta/2 x squared L2 norm of the new head",
    "probe": "linear probe on frozen features instead of fine-tuning",
    "batch_size": "batch size",
    "min_side": "training crop side (default: the checkpoint's corpus, else per backbone)",
    "max_side": "largest image side (default: the checkpoint's corpus, else per backbone)",
    "device": "cpu, cuda, cuda:N or auto (cuda when this machine has one)",
    "num_workers": "DataLoader processes",
}
_OVERRIDES = {"init": {"required": True}, "head": {"choices": ("linear", "adapt")},
              "min_side": {"type": side}, "max_side": {"type": side}, "device": {"type": device}}


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a checkpoint on your target: error over seeds", description=__doc__)
    _add_options(p)  # rtl.train.finetune_config imports no torch: cheap at `rtl --help`
    p.set_defaults(func=cmd_finetune)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.set_defaults(_fields=add_model_options(
        p, FinetuneConfig, rename={"model": "--backbone", "num_workers": "--loader-workers"},
        exclude=("seed", "keep_state", "train_subset"), helps=_HELPS, overrides=_OVERRIDES))
    p.add_argument("--seeds", type=seed_list, default=[0], help="one run per seed (comma list, e.g. 0,1,2)")
    p.add_argument("--json", type=Path, default=None, help="write the config and full results here")
    p.add_argument("--out", type=Path, default=None, help="save the fine-tuned model folder here (the seed with "
                   "the lowest val error; use with `rtl predict`)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    p.add_argument("--ok-class", default=None, help="name of the good/ok class for defect metrics (default: ok/good)")
    deprecated(p, "--model", "--backbone")
    deprecated(p, "--num-workers", "--loader-workers")


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:6.2f}%"


def format_summary(summary) -> str:
    """Per-seed val/test error, mean ± std, per-class accuracy (test, else val)."""
    lines = [f"{'seed':>6}  {'val err':>8}  {'test err':>8}  {'best ep':>7}"]
    for r in summary.results:
        lines.append(f"{r.seed:>6}  {_pct(r.val_error):>8}  {_pct(r.test_error):>8}  {r.best_epoch:>7}")
    lines.append(f"{'mean':>6}  {_pct(summary.val_mean):>8}  {_pct(summary.test_mean):>8}")
    lines.append(f"{'± std':>6}  {_pct(summary.val_std):>8}  {_pct(summary.test_std):>8}")
    lines.append("")
    split = "test" if summary.test_mean is not None else "val"
    lines.append(f"per-class accuracy ({split}, mean over seeds):")
    width = max(len(c) for c in summary.per_class_mean) if summary.per_class_mean else 5
    for c, a in summary.per_class_mean.items():
        lines.append(f"  {c:<{width}}  {_pct(a)}")
    return "\n".join(lines)


def cmd_finetune(args: argparse.Namespace) -> int:
    from rtl.train.finetune import run_finetune_seeds

    fields = model_kwargs(args, args._fields)
    fields.update(device=resolve_device(fields["device"]), keep_state=getattr(args, "out", None) is not None)
    cfg = FinetuneConfig.parse(fields, source="rtl finetune")
    if getattr(args, "out", None) is not None:
        from rtl.deliver.cli import check_out_dir

        check_out_dir(args.out)  # before hours of training, not after
    progress = None if getattr(args, "quiet", True) else _Progress(cfg.epochs, args.seeds)
    try:
        summary = run_finetune_seeds(cfg, args.seeds, on_epoch=progress)
    finally:
        if progress is not None:
            progress.close()
    print(format_summary(summary))
    if getattr(args, "out", None) is not None:
        from rtl.deliver.cli import save_finetune_out

        save_finetune_out(args.out, cfg, summary, ok_class=args.ok_class)
    _log_mlflow(cfg, summary)
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(_no_nan({"config": cfg.model_dump(), **summary.to_dict()}), indent=2))
        except OSError as e:
            raise RtlError(f"cannot write {args.json}: {e.strerror or e}") from None
    return 0


class _Progress:
    """Per-epoch progress on stderr: a tqdm bar per seed on a terminal, one line per epoch otherwise (logs)."""

    def __init__(self, epochs: int, seeds: list[int]) -> None:
        import sys

        self.epochs, self.seeds, self.run, self.bar = epochs, seeds, -1, None
        self.err, self.tty = sys.stderr, sys.stderr.isatty()

    def __call__(self, epoch: int, m: dict) -> bool:
        if epoch == 0 or self.run < 0:  # a new seed's run starts at epoch 0
            self.close()
            self.run += 1
            if self.tty:
                from tqdm import tqdm

                self.bar = tqdm(total=self.epochs, desc=f"seed {self._seed()}", file=self.err, leave=True)
        shown = {k: m[k] for k in ("train_loss", "val_error", "best_val_error") if isinstance(m.get(k), (int, float))}
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()}, refresh=False)
            self.bar.update(1)
        else:
            print(f"seed {self._seed()} epoch {epoch + 1}/{self.epochs} "
                  + " ".join(f"{k} {v:.4f}" for k, v in shown.items()), file=self.err, flush=True)
        return False

    def _seed(self) -> int | str:
        return self.seeds[self.run] if 0 <= self.run < len(self.seeds) else "?"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _no_nan(obj):
    """NaN (e.g. accuracy of a class absent from test) -> null, so the JSON is standard."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def _log_mlflow(cfg, summary) -> None:
    """One MLflow run per seed when MLFLOW_TRACKING_URI is set (rtl.artifacts.tracking is the MLflow module)."""
    import os

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    from rtl.artifacts.tracking import log_standalone_run

    target = os.path.basename(os.path.normpath(cfg.target))
    for r in summary.results:
        log_standalone_run("rtl-finetune", f"{target}:seed{r.seed}",
                           params={**cfg.model_dump(), "seed": r.seed}, history=r.history,
                           final={"final_val_error": r.val_error, "final_test_error": r.test_error,
                                  "best_epoch": r.best_epoch})
