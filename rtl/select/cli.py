"""`rtl select weights|scores`: which source data to pretrain on, or which checkpoint to start from.

    rtl select weights --target DIR --checkpoint CKPT --corpus CORPUS --out weights.json [--temperature 2.0]
        Ngiam et al. 2018 importance weights: prints the top classes and the mass per dataset/domain,
        writes weights.json (for `pretrain --strategy weighted`) with a suggested dataset mask.
    rtl select scores --target DIR --corpus CORPUS --checkpoints A B ... [--scores logme,leep,nce]
        Ranks checkpoints by LogME / LEEP / NCE / H-score on the target (no training).

The spellings without a sub-verb (`rtl select --model ...`, `rtl select --score ...`) still work for one
release and print a deprecation warning.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from pathlib import Path

import numpy as np

from rtl.cliargs import deprecated, fraction, names, positive_int, warn_deprecated
from rtl.errors import RtlError

TEMPERATURE_DEFAULT = 2.0
SCORES_DEFAULT = ["logme", "leep", "nce", "hscore"]  # rtl.select.transferability.SCORES (not imported: numpy-light)


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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="target dataset folder (dataset convention)")
    p.add_argument("--corpus", required=True, help="source corpus folder")
    p.add_argument("--split", default="train", help="target split to run on")
    p.add_argument("--datasets", type=names, metavar="A,B", help="restrict the corpus view to these datasets")
    p.add_argument("--domains", type=names, metavar="A,B", help="restrict the corpus view to these domain tags")
    p.add_argument("--batch-size", type=positive_int, default=64, help="inference batch size")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("select", help="which sources (weights) or checkpoints (scores) suit a target", description=__doc__)
    p.rewrite = lambda argv: _legacy(argv, w)  # honoured by rtl.cliargs.RtlParser
    sub = p.add_subparsers(dest="select_verb", metavar="ACTION")
    sub.required = True
    w = sub.add_parser("weights", help="importance weights of the corpus classes for a target -> weights.json",
                       description=inspect.cleandoc(_run_weights.__doc__))
    _common(w)
    w.add_argument("--checkpoint", required=True, metavar="CKPT", help="source checkpoint pretrained on the corpus")
    w.add_argument("--out", required=True, metavar="WEIGHTS_JSON",
                   help="weights.json to write (for `rtl pretrain --strategy weighted --class-weights`)")
    w.add_argument("--temperature", type=_temperature, default=TEMPERATURE_DEFAULT,
                   help="softmax temperature T (0 = arg-max; none = uniform)")
    w.add_argument("--top-k", type=positive_int, default=10, help="classes shown in the table")
    w.add_argument("--mass-threshold", type=fraction, default=0.9,
                   help="suggested mask: fewest datasets covering this share of the mass")
    w.add_argument("--mask-top-k", type=positive_int, default=None, help="suggested mask: at most this many datasets")
    deprecated(w, "--model", "--checkpoint")
    w.set_defaults(func=_run_weights)
    s = sub.add_parser("scores", help="rank candidate checkpoints for a target by LogME / LEEP / NCE / H-score",
                       description=inspect.cleandoc(_run_scores.__doc__))
    _common(s)
    s.add_argument("--checkpoints", nargs="+", required=True, metavar="CKPT", help="candidate checkpoints to rank")
    s.add_argument("--scores", type=names, default=SCORES_DEFAULT, metavar="A,B",
                   help="transferability scores to rank by: logme, leep, nce, hscore")
    s.add_argument("--out", default=None, help="also write the ranking as JSON here")
    deprecated(s, "--score", "--scores")
    s.set_defaults(func=_run_scores)


# options each sub-verb does not have, dropped from an old-style command line (the old parser accepted and
# ignored them): option -> how many values follow ("+" = up to the next option)
_ONLY_WEIGHTS = {"--model": 1, "--temperature": 1, "--top-k": 1, "--mass-threshold": 1, "--mask-top-k": 1}
_ONLY_SCORES = {"--score": 1, "--checkpoints": "+"}


def _legacy(argv: list[str], weights_parser: argparse.ArgumentParser) -> list[str]:
    """`rtl select --model M ...` -> `select weights --checkpoint M ...`; `rtl select --score S ...` ->
    `select scores --scores S ...` (one warning line); anything with a sub-verb passes unchanged."""
    if not argv or argv[0] in ("weights", "scores", "-h", "--help"):
        return argv
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    if "--score" in flags:
        warn_deprecated("rtl select --score", "rtl select scores --scores")
        return ["scores", *_rename(_drop(argv, _ONLY_WEIGHTS), "--score", "--scores")]
    rest = _rename(_drop(argv, _ONLY_SCORES), "--model", "--checkpoint")
    if not ({"--model", "--out"} <= flags or flags & {"-h", "--help"}):
        weights_parser.parse_args([*rest, "--checkpoint", "-", "--out", "-"])  # bad values: exit 2 as before
        raise RtlError("select needs --model CKPT and --out weights.json (or --score ... --checkpoints ...); "
                       "now spelled `rtl select weights --checkpoint CKPT --out weights.json`")
    warn_deprecated("rtl select --model", "rtl select weights --checkpoint")
    return ["weights", *rest]


def _drop(argv: list[str], options: dict[str, int | str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        flag = a.split("=", 1)[0]
        i += 1
        if flag not in options:
            out.append(a)
        elif "=" not in a and options[flag] == "+":
            while i < len(argv) and not argv[i].startswith("-"):
                i += 1
        elif "=" not in a:
            i += int(options[flag])
    return out


def _rename(argv: list[str], old: str, new: str) -> list[str]:
    return [new + a[len(old):] if a == old or a.startswith(old + "=") else a for a in argv]


def _open_corpus(path: str, datasets: list[str] | None, domains: list[str] | None):
    try:
        from rtl.data.corpus import open_corpus
    except ImportError:  # reader module name before the corpus package settles
        from rtl.data.corpus_view import open_corpus
    return open_corpus(path, datasets=datasets, domains=domains)


def _run_weights(args: argparse.Namespace) -> int:
    """Importance weights (Ngiam et al. 2018): the source checkpoint's predictions on the target give each
    corpus class a weight w(y) = P_t(y)/P_s(y); prints the top classes and the mass per dataset/domain and
    writes weights.json (for `rtl pretrain --strategy weighted`) with a suggested dataset mask."""
    from rtl.select.importance import aggregate_mass, class_mass, importance_weights, write_weights
    from rtl.select.inference import infer_checkpoint
    from rtl.select.ranking import format_table, rank_sources, suggest_mask, top_classes

    view = _open_corpus(args.corpus, args.datasets, args.domains)
    table = view.manifest["classes"]
    inf, meta, _ = infer_checkpoint(args.checkpoint, args.target, split=args.split, batch_size=args.batch_size,
                                    default_sides=_corpus_sides(view))
    _check_compatible(args.checkpoint, meta, view)
    prior = np.zeros(view.num_classes)  # (K,) counts of the view, 0 outside it
    for cid, n in view.class_counts().items():
        prior[int(cid)] = n
    w = importance_weights(inf.logits, prior, args.temperature)
    mass = class_mass(w, prior)
    by_ds, by_dom = aggregate_mass(mass, table)
    mask = suggest_mask(by_ds, top_k=args.mask_top_k, mass_threshold=args.mass_threshold)

    t = "uniform" if args.temperature is None else f"{args.temperature:g}"
    print(f"target {args.target} ({len(inf.logits)} images, split {args.split}); checkpoint {args.checkpoint}; T={t}")
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
        extra={"model": str(args.checkpoint), "target": str(args.target), "split": args.split},
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
    """Transferability scores: ranks candidate checkpoints on the target by LogME (You et al. 2021), LEEP
    (Nguyen et al. 2020), NCE (Tran et al. 2019) and H-score (Bao et al. 2019) and their mean rank, without
    fine-tuning."""
    from rtl.select.inference import infer_checkpoint
    from rtl.select.ranking import format_table, rank_checkpoints
    from rtl.select.transferability import SCORES, h_score, leep, logme, nce

    unknown = [s for s in args.scores if s not in SCORES]
    if unknown:
        raise RtlError(f"unknown score {unknown[0]!r}; valid: {', '.join(SCORES)}")
    if not args.checkpoints:
        raise RtlError("select scores needs --checkpoints A B ...")
    view = _open_corpus(args.corpus, args.datasets, args.domains)
    scores: dict[str, dict[str, float]] = {}
    for ckpt in args.checkpoints:
        inf, meta, _ = infer_checkpoint(ckpt, args.target, split=args.split, batch_size=args.batch_size,
                                        default_sides=_corpus_sides(view))
        _check_compatible(ckpt, meta, view)
        present = np.zeros(inf.logits.shape[1], dtype=bool)
        present[list(view.class_ids)] = True
        s: dict[str, float] = {}
        for name in args.scores:
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
    print(f"target {args.target} (split {args.split}): checkpoints ranked by mean rank over {', '.join(args.scores)}")
    print(format_table([(i + 1, r["checkpoint"], *(r[m] for m in args.scores), r["mean_rank"])
                        for i, r in enumerate(rows)], ["rank", "checkpoint", *args.scores, "mean_rank"]))
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
