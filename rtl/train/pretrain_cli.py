"""`rtl pretrain`: pretrain a backbone on the corpus (or a view / weighting of it) with Ray Train."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rtl.cliargs import nonneg_float, nonneg_int, positive_float, positive_int, seed
from rtl.errors import RtlError


def _names(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name")
    return names


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    from rtl.train.strategies import STRATEGIES

    p = subparsers.add_parser("pretrain", help="pretrain a backbone on the corpus with Ray Train",
                              description=__doc__)
    p.add_argument("--corpus", help="corpus folder (not needed for --strategy scratch/imagenet)")
    p.add_argument("--strategy", default="source", choices=STRATEGIES.names())
    p.add_argument("--model", default="resnet18")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers (DDP ranks)")
    p.add_argument("--cpus-per-worker", type=positive_int, default=1, help="CPUs (= torch threads) per worker")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (nccl)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--datasets", type=_names, help="comma-separated dataset names (a corpus view)")
    sel.add_argument("--domain", type=_names, help="comma-separated domain tags (a corpus view)")
    p.add_argument("--split", type=_names, help="corpus splits to train on (default: all)")
    p.add_argument("--class-weights", metavar="WEIGHTS_JSON", help="for --strategy weighted (rtl select output)")
    p.add_argument("--joint-dir", metavar="DIR", help="for --strategy joint: DIR/<class>/<image> folders")
    p.add_argument("--out", required=True, metavar="CKPT", help="final checkpoint directory")
    p.add_argument("--storage", help="Ray Train storage path (local, NFS or s3://); default <CKPT parent>/ray_runs")
    p.add_argument("--batch-size", type=positive_int, default=64, help="global batch, split across workers")
    p.add_argument("--lr", type=positive_float, default=0.1, help="learning rate for the global batch")
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-4)
    p.add_argument("--warmup-epochs", type=nonneg_float, default=1.0)
    p.add_argument("--samples-per-epoch", type=positive_int, help="default: rows of the (sub-)corpus")
    p.add_argument("--in-channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--max-failures", type=nonneg_int, default=2, help="worker failures to recover from (default 2)")
    p.add_argument("--loader-workers", type=nonneg_int, default=0, help="DataLoader processes per Ray worker")
    p.add_argument("--local", action="store_true", help="single process, no Ray (debugging / baseline)")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from rtl.train.checkpoint import read_meta
    from rtl.train.pretrain import PretrainConfig, pretrain_local, run_pretrain

    if args.local and (args.workers != 1 or args.gpu):
        raise RtlError("--local runs one CPU process: drop --workers/--gpu")
    cfg = PretrainConfig(
        corpus=args.corpus, strategy=args.strategy, model=args.model, out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        workers=args.workers, cpus_per_worker=args.cpus_per_worker, use_gpu=args.gpu, datasets=args.datasets,
        domains=args.domain, splits=args.split, class_weights=args.class_weights, joint_dir=args.joint_dir,
        storage_path=args.storage, seed=args.seed, samples_per_epoch=args.samples_per_epoch,
        in_channels=args.in_channels, max_failures=args.max_failures, loader_workers=args.loader_workers)
    out = (pretrain_local if args.local else run_pretrain)(cfg)
    meta = read_meta(out)
    last = meta["history"][-1] if meta["history"] else {}
    loss = f"  train_loss {last['train_loss']:.4f}" if last else ""
    print(f"checkpoint {out}  strategy {meta['strategy']}  epochs {meta['epoch']}{loss}")
    if os.environ.get("MLFLOW_TRACKING_URI"):  # params, per-epoch metrics and the checkpoint itself
        from rtl.sweep.tracking import log_standalone_run

        run_id = log_standalone_run("rtl-pretrain", f"{meta['strategy']}:{Path(out).name}",
                                    params=meta["config"], history=meta["history"],
                                    final={"train_loss": last.get("train_loss")}, artifact_dirs=[str(out)])
        print(f"MLflow run {run_id}")
    return 0
