"""`rtl select`: which source data to pretrain on (importance weights) or which checkpoint to start from
(transferability scores).

    rtl select --target DIR --model CKPT --corpus CORPUS [--temperature 2.0] --out weights.json [--top-k 10]
        Ngiam et al. 2018 importance weights: prints the top classes and the mass per dataset/domain,
        writes weights.json (for `pretrain --strategy weighted`) with a suggested dataset mask.
    rtl select --target DIR --corpus CORPUS --score logme,leep,nce --checkpoints A B ...
        Ranks checkpoints by LogME / LEEP / NCE / H-score on the target (no training).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from rtl.cliargs import fraction, positive_int
from rtl.errors import RtlError

TEMPERATURE_DEFAULT = 2.0


def _temperature(text: str) -> float | None:
    if text.lower() in ("none", "inf", "infinity", "uniform"):
        return None
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(t) or t < 0:
        raise argparse.ArgumentTypeError("temperature must be >= 0 (0 = arg-max, none = uniform)")
    return t


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("select", help="choose source data (importance weights) or rank checkpoints",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="target dataset folder (dataset convention)")
    p.add_argument("--corpus", required=True, help="source corpus folder")
    p.add_argument("--split", default="train", help="target split to run on (default train)")
    p.add_argument("--model", help="source checkpoint trained on the corpus (importance-weight mode)")
    p.add_argument("--temperature", type=_temperature, default=TEMPERATURE_DEFAULT,
                   help="softmax temperature T (default 2.0; 0 = arg-max; none = uniform)")
    p.add_argument("--out", help="weights.json to write (importance-weight mode)")
    p.add_argument("--top-k", type=positive_int, default=10, help="classes shown in the table (default 10)")
    p.add_argument("--datasets", type=_csv, help="restrict the corpus view to these datasets (comma list)")
    p.add_argument("--domains", type=_csv, help="restrict the corpus view to these domain tags (comma list)")
    p.add_argument("--mass-threshold", type=fraction, default=0.9,
                   help="suggested mask: fewest datasets covering this share of the mass (default 0.9)")
    p.add_argument("--mask-top-k", type=positive_int, default=None, help="suggested mask: at most this many datasets")
    p.add_argument("--score", type=_csv, help="rank checkpoints by these scores: logme,leep,nce,hscore")
    p.add_argument("--checkpoints", nargs="+", help="candidate checkpoints to rank (score mode)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.score:
        return _run_scores(args)
    if not args.model or not args.out:
        raise RtlError("select needs --model CKPT and --out weights.json (or --score ... --checkpoints ...)")
    return _run_weights(args)


def _open_corpus(path: str, datasets: list[str] | None, domains: list[str] | None):
    try:
        from rtl.data.corpus import open_corpus
    except ImportError:  # reader module name before the corpus package settles
        from rtl.data.corpus_view import open_corpus
    return open_corpus(path, datasets=datasets, domains=domains)


def _run_weights(args: argparse.Namespace) -> int:
    from rtl.select.importance import aggregate_mass, class_mass, importance_weights, write_weights
    from rtl.select.inference import infer_checkpoint
    from rtl.select.ranking import format_table, rank_sources, suggest_mask, top_classes

    view = _open_corpus(args.corpus, args.datasets, args.domains)
    table = view.manifest["classes"]
    inf, meta, _ = infer_checkpoint(args.model, args.target, split=args.split, batch_size=args.batch_size,
                                    default_sides=_corpus_sides(view))
    _check_compatible(args.model, meta, view)
    prior = np.zeros(view.num_classes)  # (K,) counts of the view, 0 outside it
    for cid, n in view.class_counts().items():
        prior[int(cid)] = n
    w = importance_weights(inf.logits, prior, args.temperature)
    mass = class_mass(w, prior)
    by_ds, by_dom = aggregate_mass(mass, table)
    mask = suggest_mask(by_ds, top_k=args.mask_top_k, mass_threshold=args.mass_threshold)

    t = "uniform" if args.temperature is None else f"{args.temperature:g}"
    print(f"target {args.target} ({len(inf.logits)} images, split {args.split}); model {args.model}; T={t}")
    rows = [(c["id"], c["dataset"], c["label"], m, float(w[c["id"]]), int(prior[c["id"]]))
            for c, m in top_classes(mass, table, args.top_k)]
    print(f"\ntop {len(rows)} source classes by class mass (what `weighted` pretraining samples)")
    print(format_table(rows, ["id", "dataset", "label", "class_mass", "weight", "count"]))
    print("\nmass by dataset")
    print(format_table([(k, v, "*" if k in mask else "") for k, v in rank_sources(by_ds)],
                       ["dataset", "mass", "suggested"]))
    if by_dom:
        print("\nmass by domain (a class with several tags counts for each)")
        print(format_table(rank_sources(by_dom), ["domain", "mass"]))
    out = write_weights(
        args.out, corpus_version=view.version, temperature=args.temperature, class_table=table, weights=w,
        mass=mass, suggested_datasets=mask,
        extra={"model": str(args.model), "target": str(args.target), "split": args.split},
    )
    print(f"\nsuggested --datasets {','.join(mask)}\nwrote {out}")
    return 0


def _corpus_sides(view) -> tuple[int, int]:
    params = view.manifest.get("params") or {}
    lo = int(params.get("min_side") or 64)
    return lo, max(lo, int(params.get("max_side") or lo))


def _check_compatible(ckpt: str, meta: dict, view) -> None:
    k = int(meta.get("num_classes", -1))
    if k != view.num_classes:
        raise RtlError(f"checkpoint {ckpt} has {k} classes but corpus has {view.num_classes}: "
                       "the model was not pretrained on this corpus")
    v = meta.get("corpus_version")
    if v and v != view.version:
        print(f"rtl: warning: checkpoint {ckpt} was trained on corpus version {v}, this corpus is "
              f"{view.version}; class ids are assumed to match", file=sys.stderr)


def _run_scores(args: argparse.Namespace) -> int:
    from rtl.select.inference import infer_checkpoint
    from rtl.select.ranking import format_table, rank_checkpoints
    from rtl.select.transferability import SCORES, h_score, leep, logme, nce

    unknown = [s for s in args.score if s not in SCORES]
    if unknown:
        raise RtlError(f"unknown score {unknown[0]!r}; valid: {', '.join(SCORES)}")
    if not args.checkpoints:
        raise RtlError("--score needs --checkpoints A B ...")
    view = _open_corpus(args.corpus, args.datasets, args.domains)
    scores: dict[str, dict[str, float]] = {}
    for ckpt in args.checkpoints:
        inf, meta, _ = infer_checkpoint(ckpt, args.target, split=args.split, batch_size=args.batch_size,
                                        default_sides=_corpus_sides(view))
        _check_compatible(ckpt, meta, view)
        present = np.zeros(inf.logits.shape[1], dtype=bool)
        present[list(view.class_ids)] = True
        s: dict[str, float] = {}
        for name in args.score:
            if name == "logme":
                s[name] = logme(inf.features, inf.labels)
            elif name == "hscore":
                s[name] = h_score(inf.features, inf.labels)
            elif name == "leep":
                s[name] = leep(_softmax(inf.logits, present), inf.labels)
            else:  # nce: hard source labels = the checkpoint's arg-max over the view's source classes
                s[name] = nce(np.where(present, inf.logits, -np.inf).argmax(axis=1), inf.labels)
        scores[str(ckpt)] = s
    rows = rank_checkpoints(scores)
    print(f"target {args.target} (split {args.split}): checkpoints ranked by mean rank over {', '.join(args.score)}")
    print(format_table([(i + 1, r["checkpoint"], *(r[m] for m in args.score), r["mean_rank"])
                        for i, r in enumerate(rows)], ["rank", "checkpoint", *args.score, "mean_rank"]))
    if args.out:
        try:
            Path(args.out).write_text(json.dumps({"target": str(args.target), "ranking": rows}, indent=1))
        except OSError as e:
            raise RtlError(f"{args.out}: cannot write ranking ({e.strerror})") from None
        print(f"wrote {args.out}")
    return 0


def _softmax(logits: np.ndarray, present: np.ndarray) -> np.ndarray:
    z = np.where(present[None, :], logits.astype(np.float64), -np.inf)  # (N, K)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
