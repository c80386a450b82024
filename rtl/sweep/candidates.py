"""The importance trial as the best of several from-scratch pretrainings, picked after a prefix (issue 10).

Why: on the hard synthetic family the winners of random search over bits are importance-weighted
pretrainings from scratch (Ngiam et al. 2018), and such a pretraining varies a lot with its temperature
and seed, and the all-source one also weights decoys (sources that look like the target but do not help;
the ranking's experts, which measure transfer, usually place them lower); random search draws about six
weighted pretrainings per target over random masks and keeps the best by val, the ranked search drew one
(docs/measurements/search.md, sessions 4-6). Drawing more at full price breaks the compute
target, so here the candidates share one budget the way successive halving does (Jamieson & Talwalkar
2016; the fidelity is pretraining epochs, as the issue asks): every candidate -- the trial's own
mask, temperature and seed first, then each of `search.sources.importance_candidates.variants` (the first
`top` units of the trial's mask, which is in ranking order; the mask without its `drop` mass leaders --
the units its own weights give the most mass, look-alikes included (session 7: leaving the hard family's
harmful look-alikes out of the importance trial -- by ground truth, a diagnostic -- removed 3 of the 4
largest losses to random search on draw 5 seed 1; docs/measurements/search.md); another temperature),
seed + 1, + 2 --
is pretrained for the first `cut_epoch` epochs of the generalist's schedule (split into `split` shorter
epochs each when the cut is shorter than one: same images, same per-step learning-rate schedule; then
candidate 0's full entry is no longer the one an uncut sweep builds) and scored by the target
probe (rtl.sweep.subset.probe_error, the rung score of the continuations); only the lowest probe error is
trained to the end. "To the end" continues the same run: the cut is `PretrainConfig.stop_after_epoch`,
which is not part of the run name, so the full pretraining resumes from the cut's optimizer and
learning-rate state (nothing is paid twice; the full model is what an uncut run gives).

Cache: each cut is its own content-addressed entry (key from the target, the generalist's weights, the
candidate's mask, temperature, seed, schedule and cut -- not from its weights' digest), holding the
weights it trained on and `cut.json`; the full entry's key is the usual weighted-pretraining key (rtl.artifacts.cache.cache_key with the digest of those
weights), so candidate 0 of an importance trial is the same entry a sweep without candidates built.
Resume after a kill: finished cuts and fulls are cache hits; the probes are recomputed (deterministic),
so the same candidate is picked. Compute accounting: a cut's images are the first epochs of its full
entry's history, so counters skip a cut whose full entry exists (`prefix_of`).

Everything happens inside the one trial (one MLflow run, one Optuna trial): the candidates are how the
importance trial pretrains, not trials of their own; their probe errors are the run's
`candidate_probe_error` metric (step = candidate index) and its `rtl.candidates` tag.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtl.artifacts.cache import PretrainCache, cache_key
from rtl.artifacts.checkpoint import weights_sha
from rtl.artifacts.trial import PretrainPlan
from rtl.sweep import specialists
from rtl.sweep.spec import SweepSpec

CUT_FILE = "cut.json"
MASK_FILE = "mask.json"  # in a candidate's full entry: the units it pretrained on (a variant's, not the trial's)


def pretrained_mask(weights_path: str | None) -> str:
    """Comma-joined units of the candidate whose weights file this is ("" for any other pretraining, or an
    entry built before the file existed): the reports name what the pick pretrained on, not the trial's mask."""
    p = Path(weights_path).parent / MASK_FILE if weights_path else None
    try:
        return ",".join(json.loads(p.read_text())["mask"]) if p and p.is_file() else ""
    except (OSError, ValueError, KeyError, TypeError):
        return ""


@dataclass(frozen=True)
class Candidate:
    temperature: float
    seed: int
    sources: int  # units in its mask (the first `sources` of the trial's mask, in ranking order)
    probe_error: float | None = None  # after the cut
    full_probe_error: float | None = None  # after the whole schedule (only when every candidate is completed)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def needs_leaders(spec: SweepSpec) -> bool:
    """Whether a variant drops mass leaders (then the trial's own weights must be known first)."""
    c = spec.search.sources.importance_candidates
    return c is not None and any(v.drop for v in c.variants)


def mass_leaders(weights: bytes, by: str, mask: list[str]) -> list[str]:
    """The mask's units by decreasing importance mass in `weights` (a weights.json document as written by
    rtl.select.importance.write_weights: its `datasets` / `domains` masses), ties in mask order."""
    mass = json.loads(weights).get(by) or {}
    return sorted(mask, key=lambda u: (-float(mass.get(u, 0.0)), mask.index(u)))


def needs_names(spec: SweepSpec) -> bool:
    """Whether a variant keeps only the units that share the target's class names."""
    c = spec.search.sources.importance_candidates
    return c is not None and any(v.names for v in c.variants)


def normal_name(label: str, aliases: dict[str, str] | None = None) -> str:
    """A class name compared across datasets: case, spaces, "-" and "_" ignored ("Scratch-line" = "scratch line"),
    each word's regular English plural folded ("Scratches" = "scratch", "dots" = "dot"; "cross", "glass" kept),
    then `aliases` (normal name -> normal name, `importance_candidates.class_aliases`) applied once."""
    n = " ".join(_singular(w) for w in label.casefold().replace("-", " ").replace("_", " ").split())
    return aliases.get(n, n) if aliases else n


def _singular(w: str) -> str:
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("sses", "xes", "zes", "ches", "shes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def class_units(c: dict[str, Any], by: str) -> list[str]:
    """The units (its dataset, or its domain tags) a corpus class belongs to."""
    return [c["dataset"]] if by == "datasets" else list(c.get("domain") or [])


def name_shares(manifest: dict[str, Any], target_classes: list[str], by: str,
                aliases: dict[str, str] | None = None) -> dict[str, float]:
    """unit (dataset or domain tag) -> share of the target's class names that the unit's classes also have."""
    want = {normal_name(c, aliases) for c in target_classes}
    have: dict[str, set[str]] = {}
    for c in manifest["classes"]:
        for u in class_units(c, by):
            have.setdefault(u, set()).add(normal_name(str(c["label"]), aliases))
    return {u: len(want & names) / len(want) for u, names in have.items()} if want else {}


def candidate_list(spec: SweepSpec, plan: PretrainPlan, leaders: list[str] | None = None,
                   shares: dict[str, float] | None = None,
                   chosen: list[str] | None = None) -> list[tuple[list[str], float, int]]:
    """(mask, temperature, seed) of each candidate: the trial's own first, then each variant of the spec
    (the first `top` units of the trial's mask -- it is in ranking order -- without the `drop` mass leaders
    of `leaders` (the trial's own weights' units by mass: `mass_leaders`), keeping only the units whose
    `shares` of the target's class names reach `names` (`name_shares`); a `specialists` variant: the units
    of the mask in `chosen` (rtl.sweep.specialists.choose), at its temperature), seeds
    counting up. A variant that repeats an earlier (mask, temperature) still differs by its seed; one that
    would leave no unit is skipped (its seed is not reused). `own: false` leaves the trial's own out unless
    every variant was skipped."""
    assert plan.temperature is not None, "candidates are importance-weighted"
    c = spec.search.sources.importance_candidates
    out = [(list(plan.mask), float(plan.temperature), plan.seed)]
    for i, v in enumerate(c.variants if c is not None else []):
        mask = list(plan.mask[:v.top]) if v.top else list(plan.mask)
        if v.specialists:
            if chosen is None:
                raise ValueError("candidate_list: a `specialists` variant needs the specialists' chosen units")
            mask = [u for u in mask if u in set(chosen)]
        if v.names:
            if shares is None:
                raise ValueError("candidate_list: a `names` variant needs the units' shares of the target's names")
            mask = [u for u in mask if shares.get(u, 0.0) >= v.names - 1e-9]
        if v.drop and mask:
            if leaders is None:
                raise ValueError("candidate_list: a `drop` variant needs the trial's mass leaders")
            order = [u for u in leaders if u in mask] if v.names else leaders  # names: leaders among the matches
            gone = {order[j - 1] for j in v.drop if j <= len(order)}
            mask = [u for u in mask if u not in gone]
        if mask:
            out.append((mask, float(plan.temperature if v.temperature is None else v.temperature), plan.seed + i + 1))
    if c is not None and not c.own and len(out) > 1:  # `own: false`: the variants only (own = the fallback)
        out = out[1:]
    return out


def split(spec: SweepSpec) -> int:
    """Into how many shorter epochs the candidates split each epoch of the schedule (1: none; a cut of 0.25
    of 2 epochs = the first of 4 half-size epochs: same images, same per-step learning-rate schedule)."""
    c = spec.search.sources.importance_candidates
    return c.split(spec.budget.pretrain_epochs) if c is not None else 1


def epochs_of(spec: SweepSpec) -> int:
    """Epochs of a candidate's (split) schedule."""
    return spec.budget.pretrain_epochs * split(spec)


def cut_epoch(spec: SweepSpec) -> int:
    """The epoch (of the split schedule) after which the candidates are compared (the schedule's end
    without candidates)."""
    c = spec.search.sources.importance_candidates
    return c.cut_epoch(spec.budget.pretrain_epochs) if c is not None else spec.budget.pretrain_epochs


def prefix_of(entry: Path) -> str | None:
    """The full entry's key when `entry` (a cache entry dir) is a candidate's cut; None otherwise."""
    p = Path(entry) / CUT_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text()).get("full")
    except (OSError, ValueError):
        return None


def best_candidate(spec: SweepSpec, plan: PretrainPlan, target: str, gen: Path, *,
                   complete_all: bool = False) -> tuple[Path, str, int, list[Candidate]]:
    """Pretrain every candidate up to the cut, probe each, pretrain the best to the end.

    -> (the winner's cache entry dir (ckpt/ + weights.json), its cache key, its index, the candidates with
    their probe errors). `complete_all` (benchmarks: does the cut predict the end?) also trains every other
    candidate to the end and probes it."""
    from rtl.sweep.subset import probe_error
    from rtl.sweep.trial import _importance, _pretrain, _schedule
    from rtl.train.strategies import open_view

    cut, parts = cut_epoch(spec), split(spec)
    ic = spec.search.sources.importance_candidates
    length = ic.length if ic is not None else 1.0
    cache, runs = PretrainCache(spec.cache_dir()), Path(spec.cache_dir()) / "runs"
    version = open_view(spec.corpus_path()).version
    cands, entries, gen_sha = [], [], weights_sha(gen)
    computed: dict[tuple[tuple[str, ...], float], bytes] = {}

    def weights_of(mask: list[str], temp: float) -> bytes:  # once per (mask, T): the leaders reuse candidate 0's
        if (tuple(mask), temp) not in computed:
            computed[tuple(mask), temp] = _importance(spec, gen, target, mask, temp)
        return computed[tuple(mask), temp]

    leaders = None
    if needs_leaders(spec):  # the trial's own weights rank its units by mass (one inference on the target)
        leaders = mass_leaders(weights_of(list(plan.mask), float(plan.temperature)), spec.search.sources.by,
                               list(plan.mask))
    shares = None
    if needs_names(spec):
        from rtl.data.convention import load_dataset

        shares = name_shares(open_view(spec.corpus_path()).manifest, load_dataset(target).classes(),
                             spec.search.sources.by, spec.search.sources.importance_candidates.class_aliases)
    chosen, spec_scores, agree = None, None, None
    fraction = specialists.fraction_of(spec)
    if fraction is not None:  # one short from-scratch pretraining per unit (shared by all targets), probed here
        # on the sweep's first seed whatever the trial's: the specialists that ordered the ranking choose the
        # sources, and a confirm seed of this trial re-pretrains the *same* chosen sources with its own seed
        # (the seed noise of that configuration, as for every other trial) instead of building N new
        # specialists that may choose another set (rtl.sweep.specialists, "Seeds")
        seed0 = specialists.seed_of(spec)
        spec_scores = specialists.scores(spec, list(plan.mask), target, seed0, fraction)
        chosen, agree = specialists.chosen_set(spec, spec_scores, seed0, fraction, target)
    for mask, temp, seed in candidate_list(spec, plan, leaders, shares, chosen):
        init, start, span = None, None, length
        if ic is not None and ic.from_specialist and chosen and sorted(mask) == sorted(chosen):
            start = chosen[0]  # the best-probed unit: its specialist on this trial's seed is the start point
            # (on the first seed `scores` built it; a confirm seed builds that one specialist: it is part of
            # the pretraining it continues)
            init, span = str(specialists.build(spec, start, plan.seed, fraction)), ic.continued_length()
        schedule = _schedule(spec, parts, span) | ({"from": specialists.specialist_key(spec, start, plan.seed, fraction)}
                                                   if start else {})
        base = dict(corpus_version=version, mask=mask, backbone=spec.backbone, schedule=schedule, seed=seed)
        # the weights depend on the target and the generalist: both are in the key (not the weights' digest,
        # so a resumed trial finds its cut even if a recomputation differed in the last bit)
        cut_payload = {"weighted_cut": cache_key(temperature=temp, **base), "epoch": cut,
                       "target": os.path.realpath(target), "generalist": gen_sha}
        cut_key = "cut-" + hashlib.sha256(json.dumps(cut_payload, sort_keys=True).encode()).hexdigest()[:40]

        def build_cut(d: Path, temp: float = temp, seed: int = seed, base: dict = base, mask: list = mask,
                      init: str | None = init, span: float = span, start: str | None = start) -> None:
            weights = weights_of(mask, temp)
            (d / "weights.json").write_bytes(weights)
            digest = hashlib.sha256(weights).hexdigest()[:16]
            full_key = cache_key(temperature=temp, weights_digest=digest, **base)
            (d / CUT_FILE).write_text(json.dumps({"full": full_key, "epoch": cut, "temperature": temp,
                                                  "seed": seed, "mask": sorted(mask)}))
            if spec_scores is not None:  # what the specialists said, beside every cut of this trial
                (d / specialists.SCORES_FILE).write_text(json.dumps({"probe_loss": spec_scores, "chosen": chosen}
                                                                    | ({"continued": start} if start else {})
                                                                    | ({"agreement": agree} if agree else {})))
            _pretrain(spec, d / "ckpt", runs, seed, "weighted", mask, class_weights=str(d / "weights.json"),
                      stop_after_epoch=cut, split=parts, length=span, init=init)

        cut_dir = cache.get_or_create(cut_key, build_cut)  # built atomically: cut.json is always there
        full_key = json.loads((cut_dir / CUT_FILE).read_text())["full"]
        entries.append((cut_dir, full_key, seed, mask, init, span))
        cands.append(Candidate(temp, seed, len(mask), probe_error(str(cut_dir / "ckpt"), spec, target, seed)))
    best = min(range(len(cands)), key=lambda i: (cands[i].probe_error, i))

    def full(i: int) -> Path:
        cut_dir, full_key, seed, mask, init, span = entries[i]

        def build_full(d: Path) -> None:
            (d / "weights.json").write_bytes((cut_dir / "weights.json").read_bytes())
            if sorted(mask) != sorted(plan.mask):  # a variant's own units: what the pick pretrained on
                (d / MASK_FILE).write_text(json.dumps({"mask": sorted(mask)}))
            if (cut_dir / specialists.SCORES_FILE).is_file():  # what the specialists said, for the run's tag
                (d / specialists.SCORES_FILE).write_bytes((cut_dir / specialists.SCORES_FILE).read_bytes())
            _pretrain(spec, d / "ckpt", runs, seed, "weighted", mask, class_weights=str(d / "weights.json"),
                      split=parts, length=span, init=init)

        return cache.get_or_create(full_key, build_full)

    winner = full(best)
    if complete_all:
        cands = [Candidate(x.temperature, x.seed, x.sources, x.probe_error,
                           probe_error(str(full(i) / "ckpt"), spec, target, x.seed)) for i, x in enumerate(cands)]
    return winner, entries[best][1], best, cands
