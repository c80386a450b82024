"""`rtl finetune`: fine-tune (or linear-probe) one init on a target, over several seeds, and print a table.

(`rtl pretrain` lives in rtl.train.pretrain_cli and is added from there.)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rtl.cliargs import nonneg_float, nonneg_int, positive_float, positive_int, seed_list, side
from rtl.errors import RtlError


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds: give at least one seed")
    return seeds


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a checkpoint / scratch / imagenet init on a target dataset",
                              description=__doc__)
    p.add_argument("--target", required=True, help="target dataset folder (rtl convention)")
    p.add_argument("--init", required=True, help="checkpoint directory, 'scratch' or 'imagenet'")
    p.add_argument("--model", default="small_cnn", help="backbone for scratch/imagenet (default small_cnn)")
    p.add_argument("--in-channels", type=int, default=3, choices=(1, 3), help="for scratch/imagenet")
    p.add_argument("--head", default="linear", choices=("linear", "adapt"))
    p.add_argument("--lr", type=positive_float, default=1e-2)
    p.add_argument("--backbone-lr-mult", type=nonneg_float, default=1.0)
    p.add_argument("--freeze-depth", type=nonneg_int, default=0, help="freeze the first N stages (0 = none)")
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-4)
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    p.add_argument("--reg", default="none", choices=("none", "l2sp", "delta"))
    p.add_argument("--reg-alpha", type=nonneg_float, default=0.01)
    p.add_argument("--reg-beta", type=nonneg_float, default=0.01)
    p.add_argument("--probe", action="store_true", help="linear probe on frozen features instead of fine-tuning")
    p.add_argument("--epochs", type=positive_int, default=20)
    p.add_argument("--patience", type=positive_int, default=None, help="early stopping on val error")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seeds", type=seed_list, default=[0], help="comma-separated, e.g. 0,1,2")
    p.add_argument("--min-side", type=side, default=None)
    p.add_argument("--max-side", type=side, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-workers", type=nonneg_int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the full results here")
    p.add_argument("--out", type=Path, default=None, help="save the fine-tuned model folder here (the seed with "
                   "the lowest val error; use with `rtl predict`)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    p.add_argument("--ok-class", default=None, help="name of the good/ok class for defect metrics (default: ok/good)")
    p.set_defaults(func=cmd_finetune)


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
    from rtl.train.finetune import FinetuneConfig, run_finetune_seeds

    cfg = FinetuneConfig.parse(
        {"target": args.target, "init": args.init, "model": args.model, "in_channels": args.in_channels,
         "head": args.head, "lr": args.lr, "backbone_lr_mult": args.backbone_lr_mult,
         "freeze_depth": args.freeze_depth, "weight_decay": args.weight_decay, "optimizer": args.optimizer,
         "reg": args.reg, "reg_alpha": args.reg_alpha, "reg_beta": args.reg_beta, "probe": args.probe,
         "epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size,
         "min_side": args.min_side, "max_side": args.max_side, "device": args.device,
         "num_workers": args.num_workers, "keep_state": getattr(args, "out", None) is not None},
        source="rtl finetune",
    )
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
    """One MLflow run per seed when MLFLOW_TRACKING_URI is set (rtl.sweep.tracking is the MLflow module)."""
    import os

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    from rtl.sweep.tracking import log_standalone_run

    target = os.path.basename(os.path.normpath(cfg.target))
    for r in summary.results:
        log_standalone_run("rtl-finetune", f"{target}:seed{r.seed}",
                           params={**cfg.model_dump(), "seed": r.seed}, history=r.history,
                           final={"final_val_error": r.val_error, "final_test_error": r.test_error,
                                  "best_epoch": r.best_epoch})
