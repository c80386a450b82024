"""Specialists: a short from-scratch pretraining on each unit alone, probed on the target (issue 10).

Why: the importance weights of the generalist (Ngiam et al. 2018) follow the *world* an image shows (its
background, palette, imaging), not its defects: on the hard synthetic family they put most of the mass on
same-background look-alikes whose labels teach nothing the target needs (session 9: 0.99 of target_stripes'
mass on an unrelated look-alike), and the experts continued from the generalist inherit its features
(false "none"). A model trained from scratch on one source alone has only that source's labels to learn
from, so what its frozen features separate is what that source's labels mean: a logistic probe on them
separates the target's classes well when the source's defects are the target's (related), badly when its
labels follow a shortcut the target lacks (harmful) or other defects (look-alikes). Measured before this
was built (draws 5 and 6, 16 targets with a related source): the related sources were the best-probed
units on every one (docs/measurements/search.md, session 10).

Cost: every unit gets the same `fraction` of the generalist's pretraining images (equal compute whatever
its size), from scratch, the sweep's schedule; specialists do not depend on the target, so one set serves
every target and trial of a sweep (content-addressed cache entries, one lock per key: concurrent trials
build each once). The probe score is the cross-validated log-loss of a logistic probe on the target's
train + val images (rtl.select.signals.cv_probe_loss) -- never its test split.

Seeds: the specialists are built on the sweep's first seed only (`seed_of`); they choose the importance
trial's sources and order the ranked space. A confirm trial of the importance trial (another seed)
pretrains the sources they chose with its own seed -- the seed noise of that configuration, which the
report's verdict compares. Before session 14 every confirm seed built its own N specialists (twice their
cost with `seeds: [0, 1]`) and could pretrain another set than the one the report names.

The chosen set (`choose`): the units before the largest gap in the sorted scores among the best
`max_k` + 1, so "one clearly best source" gives one and "two about as good, then a drop" gives two.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rtl.artifacts.cache import PretrainCache
from rtl.sweep.spec import ImportanceCandidates, SweepSpec, ranking_method

SCORES_FILE = "specialists.json"  # in a candidate's cut entry: every unit's probe loss and the chosen set


def settings(spec: SweepSpec) -> ImportanceCandidates:
    """Where the specialists' fraction and cut live: the importance candidates, or their defaults without."""
    return spec.search.sources.importance_candidates or ImportanceCandidates()


def fraction_of(spec: SweepSpec) -> float | None:
    """The specialists' share of the generalist's images when a candidate variant or the ranking asks for
    them, else None."""
    c = spec.search.sources.importance_candidates
    if (c is not None and any(v.specialists for v in c.variants)) or (
            spec.search.sources.space == "ranked" and ranking_method(spec.search.sources) == "specialists"):
        return settings(spec).specialist_fraction
    return None


def seed_of(spec: SweepSpec) -> int:
    """The seed the specialists are built on: the sweep's first (module docstring, "Seeds")."""
    return int(spec.seeds[0])


def ranking(spec: SweepSpec, units: list[str], target: str) -> dict:
    """The target's ranking by its specialists (`search.sources.ranking.method: specialists`): units by probe
    loss, best first (ties: name), built on the sweep's first seed -- the specialists the importance trial's
    candidate uses. `suggested` is `chosen_set`'s (the probe's cut, plus the units the label agreement adds,
    with what it measured under "agreement"); there is no null verdict (the sweep's verdict
    tests "no subset beats the generalist" on the confirm seeds). Same file form as `rtl rank` (version,
    target, order, rows, suggested, corpus_version) plus "method": "specialists"."""
    from rtl.artifacts.ranking import RANKING_VERSION
    from rtl.train.strategies import open_view

    fraction, seed = fraction_of(spec), seed_of(spec)
    assert fraction is not None, "ranking by specialists needs their fraction"
    loss = scores(spec, units, target, seed, fraction)
    order = sorted(units, key=lambda u: (loss[u], u))
    chosen, agree = chosen_set(spec, loss, seed, fraction, target)
    per = _images_per_epoch(spec, fraction) * spec.budget.pretrain_epochs
    added, dropped = (agree.get("added", []), agree.get("dropped", {})) if agree else ([], {})
    cut = [c for c in chosen if c not in added] + list(dropped)
    verdict = f"by specialists' probe loss; they keep {', '.join(sorted(cut, key=lambda u: (loss[u], u)))}"
    if added:
        verdict += f"; labels agree with {agree['anchor']}'s: + {', '.join(added)}"
    if dropped:
        verdict += "; of those, dropped " + ", ".join(f"{u} ({why})" for u, why in dropped.items())
    out = {"version": RANKING_VERSION, "method": "specialists", "target": Path(target).name,
           "target_path": str(Path(target).resolve()), "corpus": str(Path(spec.corpus_path()).resolve()),
           "corpus_version": open_view(spec.corpus_path()).version, "by": spec.search.sources.by, "seeds": [seed],
           "rows": [{"rank": i + 1, "unit": u, "probe_loss": loss[u], "chosen": u in chosen}
                    | ({"agreement": agree["agreement"][u]} if agree and u in agree["agreement"] else {})
                    for i, u in enumerate(order)],
           "order": order, "suggested": chosen, "recommend": "subset", "verdict": verdict,
           "cost": {"specialist_images": per * len(units), "fraction": fraction}}
    return out | ({"agreement": agree} if agree else {})


def format_ranking(r: dict) -> str:
    """The printed table of a specialists' ranking (`rankings/<target>.txt`)."""
    from rtl.select.ranking import format_table

    agree = "agreement" in r
    dropped = (r.get("agreement") or {}).get("dropped") or {}
    rows = [[x["rank"], x["unit"], f"{x['probe_loss']:.3f}"]
            + ([f"{x['agreement']:.2f}" if "agreement" in x else ""] if agree else [])
            + ["chosen" if x["chosen"] else "dropped" if x["unit"] in dropped else ""] for x in r["rows"]]
    head = ["rank", r["by"][:-1], "probe loss"] + ([f"agrees with {r['agreement']['anchor']}"] if agree else []) + [""]
    c = r["cost"]
    return (f"target {r['target']}\n" + format_table(rows, head) + "\n"
            + f"verdict: {r['verdict']}\ncost: specialists {c['specialist_images']} images "
            f"({c['fraction']:g} of the generalist's each), shared by every target of the sweep")


def _images_per_epoch(spec: SweepSpec, fraction: float) -> int:
    from rtl.sweep.trial import samples_per_epoch
    from rtl.train.strategies import open_view

    n = samples_per_epoch(spec)
    if n is None:  # "epochs" budget: the generalist's epoch = the whole searchable corpus
        n = len(open_view(spec.corpus_path()))
    return max(spec.budget.batch_size, int(round(n * fraction)))


def specialist_key(spec: SweepSpec, unit: str, seed: int, fraction: float) -> str:
    from rtl.sweep.trial import _schedule
    from rtl.train.strategies import open_view

    payload = {"specialist": unit, "by": spec.search.sources.by, "fraction": float(fraction), "seed": int(seed),
               "corpus_version": open_view(spec.corpus_path()).version, "backbone": spec.backbone,
               "schedule": _schedule(spec)}
    return "spec-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:40]


def build(spec: SweepSpec, unit: str, seed: int, fraction: float) -> Path:
    """The specialist of `unit` (cached): -> its checkpoint dir."""
    from rtl.sweep.trial import _view_args
    from rtl.train.pretrain import PretrainConfig, pretrain_local, run_pretrain

    cache, runs = PretrainCache(spec.cache_dir()), Path(spec.cache_dir()) / "runs"
    r = spec.resources

    def build_fn(d: Path) -> None:
        cfg = PretrainConfig(corpus=spec.corpus_path(), strategy="subset", model=spec.backbone, out=str(d / "ckpt"),
                             epochs=spec.budget.pretrain_epochs, samples_per_epoch=_images_per_epoch(spec, fraction),
                             batch_size=spec.budget.batch_size * r.train_workers, workers=r.train_workers,
                             cpus_per_worker=max(1, int(r.cpus)), use_gpu=r.gpus > 0, storage_path=str(runs),
                             seed=seed, min_side=spec.image.min_side, max_side=spec.image.max_side,
                             **_view_args(spec, [unit]))
        (run_pretrain if r.train_workers > 1 else pretrain_local)(cfg)
        (d / "specialist.json").write_text(json.dumps({"unit": unit, "fraction": fraction, "seed": seed}))

    return cache.get_or_create(specialist_key(spec, unit, seed, fraction), build_fn) / "ckpt"


def probe_loss(ckpt: Path, spec: SweepSpec, target: str) -> float:
    """Cross-validated log-loss of a logistic probe on `ckpt`'s frozen features of the target's train + val."""
    import numpy as np

    from rtl.select.signals import cv_probe_loss
    from rtl.sweep.subset import _target_splits
    from rtl.train.checkpoint import load_checkpoint
    from rtl.train.probe import extract_features

    model, _ = load_checkpoint(str(ckpt))
    tr, va = _target_splits(target, int(getattr(model, "in_channels", 3)), (spec.image.min_side, spec.image.max_side))
    x1, y1 = extract_features(model, tr, batch_size=spec.budget.batch_size)
    x2, y2 = extract_features(model, va, batch_size=spec.budget.batch_size)
    return cv_probe_loss(np.vstack([x1, x2]), np.concatenate([np.asarray(y1), np.asarray(y2)]))


def scores(spec: SweepSpec, units: list[str], target: str, seed: int, fraction: float) -> dict[str, float]:
    """unit -> probe loss of its specialist on `target` (each specialist built once, cached). When this
    sweep's ranking of `target` was made by the same specialists (`ranking`), its losses are read back
    instead of probing every specialist on the target a second time (the probe is deterministic)."""
    known = _ranked_losses(spec, target, seed, fraction)
    if known is not None and set(units) <= set(known):
        return {u: known[u] for u in units}
    return {u: probe_loss(build(spec, u, seed, fraction), spec, target) for u in units}


def _ranking_by_same_specialists(spec: SweepSpec, target: str, seed: int, fraction: float) -> dict | None:
    """This sweep's specialists' ranking of `target` when made by the same specialists (same seed, fraction and
    target folder) and readable, else None."""
    from rtl.artifacts.layout import ranking_path

    path = Path(ranking_path(spec.results_dir, Path(target).name))
    try:
        r = json.loads(path.read_text())
        same = (r.get("method") == "specialists" and r.get("seeds") == [seed]
                and r["cost"]["fraction"] == fraction and r["target_path"] == str(Path(target).resolve()))
        return r if same else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ranked_losses(spec: SweepSpec, target: str, seed: int, fraction: float) -> dict[str, float] | None:
    """The probe losses of this sweep's specialists' ranking of `target` (`_ranking_by_same_specialists`), or None."""
    r = _ranking_by_same_specialists(spec, target, seed, fraction)
    try:
        return {x["unit"]: float(x["probe_loss"]) for x in r["rows"]} if r else None
    except (KeyError, TypeError, ValueError):
        return None


def chosen_set(spec: SweepSpec, losses: dict[str, float], seed: int, fraction: float, target: str
               ) -> tuple[list[str], dict | None]:
    """The sources the specialists choose for a target: `choose`'s cut of the probe losses, plus (with
    `importance_candidates.specialist_agreement`) the units whose labels agree with the best-probed one's
    (rtl.sweep.agreement). -> (the set, best-probed first then the added ones; what the agreement measured,
    or None when it is off). When this sweep's ranking of the target was made from the same losses and setting,
    its choice is read back."""
    c = settings(spec)
    r = _ranking_by_same_specialists(spec, target, seed, fraction)
    said = (r.get("agreement") or {}) if r is not None else {}
    if r is not None and _ranked_losses(spec, target, seed, fraction) == losses and (
            said.get("threshold") == c.specialist_agreement and bool(said.get("prune")) == (
            c.specialist_prune and c.specialist_agreement is not None)
            and (said.get("aliases") or {}) == (c.class_aliases if c.specialist_agreement is not None else {})):
        # the ranking already chose from these losses (with the same agreement settings): read back, not re-run --
        # the agreement's forward passes once per target, and the importance trial pretrains what it shows
        return list(r["suggested"]), r.get("agreement")
    chosen = choose(losses, c.specialist_max_k)
    if c.specialist_agreement is None or not chosen:
        return chosen, None
    from rtl.sweep.agreement import expand

    return expand(spec, losses, chosen, lambda u: build(spec, u, seed, fraction), c.specialist_agreement,
                  target, prune=c.specialist_prune, aliases=c.class_aliases)


def choose(scores: dict[str, float], max_k: int = 4) -> list[str]:
    """The units before the largest gap of the sorted losses among the best `max_k` + 1 (ties: the smaller
    set; in ascending loss order). One unit -> itself; none -> []."""
    order = sorted(scores, key=lambda u: (scores[u], u))
    if len(order) <= 1:
        return order
    head = order[:max_k + 1]
    gaps = [scores[head[i + 1]] - scores[head[i]] for i in range(len(head) - 1)]
    k = max(range(len(gaps)), key=lambda i: (gaps[i], -i)) + 1
    return head[:k]
