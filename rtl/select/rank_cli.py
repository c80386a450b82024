"""`rtl rank`: per-source signals, signed gains over the generalist and a verdict for one target.

    rtl rank --target data/targets/target_pcb --corpus corpus/ --generalist ckpt/gen
    rtl rank ... --json ranking.json      # machine-readable (the sweep's ranked search reads it)

Experts (the generalist continued on each source unit) are cached in the workspace's pretraining cache
(default `<corpus parent>/cache`): a second call builds nothing.
"""

from __future__ import annotations

import argparse

from rtl.cliargs import device, float_range, int_range, resolve_device


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        out = [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or any(s < 0 for s in out):
        raise argparse.ArgumentTypeError(f"expected one or more seeds >= 0, got {text!r}")
    return out


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rank", help="which sources help, hurt or do nothing for a target", description=__doc__)
    p.add_argument("--target", required=True, help="target dataset folder (dataset convention)")
    p.add_argument("--corpus", required=True, help="source corpus folder")
    p.add_argument("--generalist", required=True, help="checkpoint pretrained on the whole corpus")
    p.add_argument("--by", choices=["datasets", "domains"], default="datasets", help="source unit")
    p.add_argument("--units", type=_csv, default=None, help="only these units (comma list; default all)")
    p.add_argument("--expert-fraction", type=float_range(0.0, 1.0, lo_open=True), default=0.05,
                   help="images per expert, as a fraction of the generalist's pretraining images")
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="short fine-tune seeds (noise estimate)")
    p.add_argument("--finetune-epochs", type=int_range(1), default=3, help="epochs of each short fine-tune")
    p.add_argument("--finetune-lr", type=float_range(0.0, lo_open=True), default=0.01,
                   help="learning rate of each short fine-tune")
    p.add_argument("--temperature", type=float_range(0.0, lo_open=True), default=2.0,
                   help="importance-weight temperature (Ngiam et al. 2018)")
    p.add_argument("--source-images", type=int_range(2), default=64,
                   help="corpus images per unit for the feature distance and image statistics")
    p.add_argument("--cache", default=None, help="pretraining cache dir (default: <corpus parent>/cache)")
    p.add_argument("--batch-size", type=int_range(1), default=32, help="batch size of fine-tunes and inference")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda or auto (cuda when this machine has one)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the ranking as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtl.select.rank import RankConfig, format_ranking, rank_target, write_ranking

    cfg = RankConfig(target=args.target, corpus=args.corpus, generalist=args.generalist, by=args.by,
                     units=args.units, expert_fraction=args.expert_fraction, seeds=args.seeds,
                     finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                     temperature=args.temperature, source_images=args.source_images, cache_dir=args.cache,
                     batch_size=args.batch_size, use_gpu=resolve_device(args.device).startswith("cuda"))
    ranking = rank_target(cfg)
    print(format_ranking(ranking))
    if args.json_out:
        print(f"wrote {write_ranking(args.json_out, ranking)}")
    return 0
