"""Sweep spec: the YAML a user copies from `sweeps/` and edits, validated into a `SweepSpec`.

Every problem is one line naming the file and the field (`sweeps/x.yaml: search.lr.low: must be > 0`);
malformed YAML is reported as `file:line: ...`. Paths: `workspace` is relative to the spec file;
relative `corpus` and `targets` are relative to the workspace (and may not climb out of it with `..`), so
overriding only the workspace (`rtl demo --workspace W`) moves everything together.

The workspace is always a filesystem path shared by every node (a local dir on a laptop, an NFS/EFS mount
on a cluster), never a URL: `spec.json`, `status`/`report`/`resume` and the pretraining cache (`flock`)
need POSIX files. What may be remote is named in `storage`: Optuna on PostgreSQL (`storage.optuna`) and an
`mlflow server` (`storage.tracking_uri`, which can keep artifacts on S3). `${VAR}` in `storage.*` is taken
from the environment when used (`optuna_url()`, `tracking_uri()`, `cache_dir()`), so a password never lands
in the resolved `spec.json`.

Layout of one sweep (its *results dir*): `<workspace>/<name>/{spec.json, ray_results/, optuna.db,
mlflow.db, report/}`; the pretraining cache is shared by every sweep of a workspace at
`<workspace>/cache` because its keys are content hashes (corpus version, mask, weights, model, schedule).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rtl.artifacts.specfile import read_spec_json, write_spec_json
from rtl.artifacts.trial import (
    CONTROLS,
    OBJECTIVES,
    REGULARIZERS,
    SCHEDULERS,
    SEARCHERS,
    ObjectiveName,
    RegularizerName,
    SchedulerName,
    SearcherName,
)
from rtl.errors import ConfigError
from rtl.yamlio import parse_yaml

CONTROL_NAMES = CONTROLS
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogRange(_M):
    low: float
    high: float

    @field_validator("low", "high")
    @classmethod
    def _pos(cls, v: float) -> float:
        if not (v > 0 and math.isfinite(v)):
            raise ValueError("must be > 0")
        return v

    @model_validator(mode="after")
    def _order(self) -> LogRange:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self


class IntRange(_M):
    low: int = Field(ge=0)
    high: int = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> IntRange:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self


class Temperature(LogRange):
    allow_off: bool = True  # also try "off" (uniform sampling of the masked corpus, no importance weights)


class Ranking(_M):
    """How the sweep ranks a target's sources before searching (`rtl rank`, rtl.select.rank)."""

    file: str | None = None  # a ranking JSON per target: `{target}` is replaced by the target's name
    # experts (`rtl rank`: the generalist continued on each unit, signals + a signed gain that can say "none")
    # or specialists (each unit's from-scratch specialist, best target probe first: the specialists the
    # importance trial's `specialists` candidate builds anyway, so the experts' pretraining is not paid).
    # auto (default): specialists when the importance candidates build them, else experts (the experts cost
    # N/20 generalist pretrainings per seed, specialists N/4). Ranking by specialists instead of experts
    # changed the pick on 1 of 48 benchmark pairs (equal regret otherwise) for 0.93x the images and 0.7x the
    # wall time (docs/measurements/search.md, session 13)
    method: Literal["auto", "experts", "specialists"] = "auto"
    expert_fraction: float = Field(0.05, gt=0, le=1)  # images per expert / generalist images
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    finetune_epochs: int = Field(3, ge=1)


def ranking_method(sources: Sources) -> str:
    """"experts" or "specialists": what orders a ranked sweep's space (`ranking.method`, auto resolved)."""
    m = sources.ranking.method
    if m != "auto":
        return m
    c = sources.importance_candidates
    uses = c is not None and sources.importance_trial is not None and any(v.specialists for v in c.variants)
    return "specialists" if uses else "experts"


class ImportanceTop(_M):
    """A second from-scratch importance trial: the top `fraction` of the target's ranking (at least one
    unit), importance-weighted at `temperature` by the generalist (> 1 flattens the weights: more of the
    mask's classes are drawn), pretrained from scratch for the generalist's full budget."""

    fraction: float = Field(1 / 3, gt=0, le=1)
    temperature: float = Field(2.0, gt=0)

    def k(self, n_units: int) -> int:
        return max(1, min(n_units, int(round(self.fraction * n_units))))


class CandidateVariant(_M):
    """One more candidate of an importance trial: the first `top` units of the trial's mask (its mask is in
    ranking order: every source, or the ranking's top-k), null = the whole mask; `drop` (1-based) removes
    the units that take the most importance mass under the trial's own weights -- [1] the leader, [2] the
    runner-up, [1, 2] both; a position past the mask's size drops nothing -- so a look-alike that takes most of the weighted batches without teaching the
    target's labels can be left out; `temperature` null = the trial's own."""

    top: int | None = Field(None, ge=1)
    drop: list[int] | None = Field(None, min_length=1)
    temperature: float | None = Field(None, gt=0)
    # keep only the units whose class names hold at least this share of the target's class names (case,
    # spaces, "-" and "_" ignored); the importance mass goes by the world an image shows, the names by what
    # its labels mean (session 9: the hard family's look-alikes take the mass). With `drop`, the leaders are
    # counted among the matching units. No unit matches -> the variant is skipped.
    names: float | None = Field(None, gt=0, le=1)
    # keep only the units whose *specialists* (a short from-scratch pretraining on that unit alone) give the
    # best target probe -- those before the largest gap of the sorted probe losses (rtl.sweep.specialists):
    # what a source's labels teach, not what its images look like (session 10). Not combined with
    # top / drop / names.
    specialists: bool = False

    @model_validator(mode="after")
    def _specialists_alone(self) -> CandidateVariant:
        if self.specialists and (self.top or self.drop or self.names):
            raise ValueError("a `specialists` variant chooses its own units: not combined with top, drop or names")
        return self

    @field_validator("drop", mode="before")
    @classmethod
    def _one_drop(cls, v: object) -> object:
        return [v] if isinstance(v, int) and not isinstance(v, bool) else v  # `drop: 1` = `drop: [1]`

    @field_validator("drop")
    @classmethod
    def _drop(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (any(int(i) < 1 for i in v) or len(set(v)) != len(v)):
            raise ValueError(f"drop: distinct mass-leader positions >= 1 (1 = the leader), got {v}")
        return v

    def describe(self, t0: float) -> str:
        if self.specialists:
            return f"the sources whose specialists probe best at T={self.temperature or t0:g}"
        what = f"top {self.top}" if self.top else "same mask"
        if self.names:
            held = "all" if self.names >= 1 else f">= {self.names:.0%}"
            what = (f"{what}, " if self.top else "") + f"sources holding {held} of the target's class names"
        if self.drop:
            what += " without mass leader" + ("s " if len(self.drop) > 1 else " ") + "+".join(map(str, self.drop))
        return f"{what} at T={self.temperature or t0:g}"


class ImportanceCandidates(_M):
    """How the importance trial's from-scratch weighted pretraining is chosen. Default: one variant, the
    sources whose specialists probe best (`own: false`): a single pretraining on them, nothing compared.
    With several candidates -- the trial's own (mask, temperature) first when `own`, then each of
    `variants` (seed + 1, + 2, ...) -- each is pretrained for the first `cut` of the schedule and scored by
    the target probe; only the best is pretrained to the end (it continues the same run: same
    learning-rate schedule, nothing repeated).
    Cost: n x cut + (1 - cut) pretrainings per importance trial instead of 1 (rtl.sweep.candidates).
    A cut shorter than one of the schedule's epochs (0.25 of 2 epochs) splits each epoch into `split`
    shorter ones of the same images and warm-up (the per-step schedule is unchanged), so the cut falls on an
    epoch boundary: 0.25 of 2 epochs = epoch 1 of 4 half-size epochs."""

    # default (session 12): the specialists' chosen sources alone (`own: false`: one pretraining, no cut) --
    # better than session 8's default (its own, without the importance-mass leader, without the runner-up,
    # picked after a quarter) on 43 of 72 benchmark pairs and worse on 15 (draws 6, 7 and the unseen 8,
    # p <= 0.005 on each), and better than random search over bits at 0.36x its images
    # (docs/measurements/search.md, session 10); session 8's default: variants [{drop: [1]}, {drop: [2]}],
    # own: true
    variants: list[CandidateVariant] = Field(
        default_factory=lambda: [CandidateVariant(specialists=True)], min_length=1)
    cut: float = Field(0.25, gt=0, lt=1)
    # `specialists` variants: each unit's specialist gets this share of the generalist's pretraining images
    # (the same for every unit; built once per sweep and seed, shared by all targets), and the chosen set is
    # cut from the best `specialist_max_k` + 1 (rtl.sweep.specialists). 0.2 since session 18: 7 % fewer images
    # than 0.25 (0.31x random search's with 8 targets), and with the label agreement's prune level with 0.25 on two
    # unseen draws (48 pairs: 7 better / 35 equal / 6 worse; harmful picks 2 vs 2; related set matched 31 vs 31 of
    # 36; pre-registered, search.md). Without the prune 0.2 chose a harmful source more often (session 13).
    specialist_fraction: float = Field(0.2, gt=0, le=1)
    specialist_max_k: int = Field(4, ge=1)
    # + the units whose labels agree with the best-probed unit's (its specialist's head on their held-out images
    # and theirs on its, by class name, in each head's imaging; kappa >= this), sharing >= 3 class names with it
    # and probing the target no worse than the median unit -- only when that unit's own head reads the target's
    # train + val labels by name (kappa >= this) (rtl.sweep.agreement; no pretraining). Finds the shifted related
    # sources (gray scan, other magnification) the probe misses: the sweep's pick matched the related set
    # (J >= 0.8) on 50 of 60 benchmark pairs instead of 30, quality level with the previous default (80 pairs,
    # mean regret difference +0.000 [-0.014, +0.012]), no harmful source added (docs/measurements/search.md,
    # session 16). None: off (the default before session 16)
    specialist_agreement: float | None = Field(0.2, ge=0, le=1)
    # with the agreement: the anchor is the best-probed member of the probe's cut whose head reads the target's
    # labels, and the cut keeps only the members whose labels agree with the anchor's (kappa >=
    # `specialist_agreement`); a member that disagrees, or shares no class name with it but `ok`, is dropped
    # (rtl.sweep.agreement, "The prune"). Pre-registered on two unseen draws: the pick matched the related set on
    # 34 of 36 pairs instead of 28, ~78 of 84 over five draws as shipped (68), quality level (112 pairs, 4 better
    # / 3 worse), no harmful pick gained (docs/measurements/search.md, session 17). false: the cut kept whole
    specialist_prune: bool = True
    # class names read as the same by the agreement and the name-based candidates, for datasets that name one
    # defect differently: {name: canonical name}, e.g. {scuff: scratch, good: ok} (case, separators and regular
    # plurals are already ignored: "Scratches" = "scratch")
    class_aliases: dict[str, str] = Field(default_factory=dict)
    # false (default): the trial's own (mask, temperature) is not a candidate -- with one variant, the
    # importance trial simply pretrains that variant (no cut is compared; 1 pretraining); the own one is the
    # fallback only when every variant is skipped
    own: bool = False
    # the importance trial's pretraining gets this share of the generalist's images (same epochs, each
    # shorter; 1 = the generalist's full budget). Cuts compute, at a price: 0.5 was worse than 1 on 28 of 48
    # benchmark pairs and better on 11 (p = 0.002; docs/measurements/search.md, session 12)
    length: float = Field(1.0, gt=0, le=1)
    # a `specialists` candidate starts from the specialist of its best-probed unit (already built: the
    # specialists are what chose it) instead of from scratch, and is pretrained for the rest of the budget:
    # `length` - `specialist_fraction` of the generalist's images, so that unit has had the same images in all;
    # false (default): from scratch, `length` of them. Cuts compute, at a price: with 8 targets 0.31-0.32x
    # random search's images (the default then, ranked by experts: 0.36x; now 0.34x) and still better than
    # random search (28/6/14, p = 0.003), but
    # worse than the default on 24 of 48 benchmark pairs, better on 11 (docs/measurements/search.md, session 13)
    from_specialist: bool = False

    @field_validator("class_aliases")
    @classmethod
    def _aliases(cls, v: dict[str, str]) -> dict[str, str]:
        from rtl.sweep.candidates import normal_name

        out = {}
        for k, t in v.items():
            a, b = normal_name(str(k)), normal_name(str(t))
            if not a or not b:
                raise ValueError(f"class_aliases: empty class name in {k!r}: {t!r}")
            if a != b:
                out[a] = b
        if bad := sorted(k for k, t in out.items() if t in out):
            raise ValueError(f"class_aliases: {', '.join(bad)} map to a name that is itself an alias; map each name "
                             f"straight to its canonical name")
        return out

    @model_validator(mode="after")
    def _from_specialist(self) -> ImportanceCandidates:
        if self.from_specialist:
            if not any(v.specialists for v in self.variants):
                raise ValueError("from_specialist: needs a `specialists` variant (it continues that variant's best "
                                 "specialist)")
            if self.length - self.specialist_fraction <= 1e-9:
                raise ValueError(f"from_specialist: length ({self.length:g}) must exceed specialist_fraction "
                                 f"({self.specialist_fraction:g}): the continuation gets length - specialist_fraction")
        return self

    def continued_length(self) -> float:
        """The share of the generalist's images a `specialists` candidate is pretrained for."""
        return self.length - self.specialist_fraction if self.from_specialist else self.length

    def split(self, epochs: int) -> int:
        """Into how many shorter epochs each of the schedule's `epochs` is split (1: none) so that the cut
        is at least one epoch."""
        return max(1, math.ceil(1 / (self.cut * epochs) - 1e-9))

    def cut_epoch(self, epochs: int) -> int:
        """The epoch (of the split schedule) after which the candidates are compared (at least 1, before the
        last)."""
        n = epochs * self.split(epochs)
        return min(n - 1, max(1, int(round(self.cut * n))))


class Sources(_M):
    """`space: ranked` (default): the subset is the top-k of the target's ranking (k searched, 0 = the
    generalist alone) with one drop and one add swap; `space: bits`: one on/off bit per unit (wave 1).
    `by: bits` is accepted as shorthand for `{by: datasets, space: bits}`."""

    by: Literal["datasets", "domains", "bits"] = "datasets"
    space: Literal["ranked", "bits"] = "ranked"
    include: list[str] | None = None  # searchable units (default: every dataset / domain of the corpus)
    max_k: int | None = Field(None, ge=1)  # largest top-k searched (default: every unit)
    swaps: int = Field(2, ge=0)  # drop one of the first `swaps` of the top-k / add one of the next `swaps`
    # ranked space: the first enqueued ranking trial is Ngiam et al.'s (2018) domain-adaptive pretraining --
    # every source, importance-weighted at this temperature by the generalist, pretrained FROM SCRATCH for
    # the generalist's full budget (the one ranked trial that does not continue the generalist); null: none
    importance_trial: float | None = Field(1.0, gt=0)
    # and a second one on the ranking's top (null: none); each costs one generalist's pretraining per target
    importance_top: ImportanceTop | None = None
    # sampled trials may fine-tune the importance trial's pretraining (`pretrain: importance | continue`, a
    # searched categorical), and two enqueued trials fine-tune it at search.lr's low and high ends: the
    # strongest init gets the search's fine-tune settings at no pretraining cost
    importance_init: bool = True
    # each importance trial as the best of several candidates picked after a prefix (null: one pretraining)
    importance_candidates: ImportanceCandidates | None = Field(default_factory=ImportanceCandidates)
    ranking: Ranking = Ranking()

    @model_validator(mode="after")
    def _bits_alias(self) -> Sources:
        if self.by == "bits":
            self.by, self.space = "datasets", "bits"
        return self

    @field_validator("include")
    @classmethod
    def _nonempty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("at least one source must be searchable")
        return v


class Regularizer(_M):
    choices: list[RegularizerName] = ["none"]
    strength: LogRange = LogRange(low=1e-4, high=1e-1)

    @field_validator("choices", mode="before")
    @classmethod
    def _known(cls, v: Any) -> Any:
        bad = [c for c in v if c not in REGULARIZERS] if isinstance(v, list) else v
        if bad or not v:
            raise ValueError(f"unknown {bad}; valid: {', '.join(REGULARIZERS)}")
        return v


class Search(_M):
    sources: Sources = Sources()
    temperature: Temperature = Temperature(low=0.5, high=8.0)
    lr: LogRange = LogRange(low=1e-3, high=1e-1)
    freeze_depth: IntRange = IntRange(low=0, high=2)
    regularizer: Regularizer = Regularizer()


class Budget(_M):
    """`pretrain_budget`: "steps" (default) gives every source subset the same number of optimiser steps
    — `pretrain_epochs` passes over the whole searchable corpus — so a small related subset is not
    under-trained next to the full corpus (docs/measurements/training.md: at equal epochs a 2-dataset
    subset got ~8x fewer steps and its gain mostly vanished). "epochs": passes over the subset itself."""

    pretrain_epochs: int = Field(2, ge=1)
    pretrain_budget: Literal["steps", "epochs"] = "steps"
    finetune_epochs: int = Field(4, ge=1)
    trials_per_target: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    # ranked space: a subset's pretraining continues the generalist for this fraction of the generalist's
    # images, whatever the subset's size (equal compute per subset), in successive-halving rungs; one cut
    # at 1/3 by default: a 1/9 rung ranked subsets poorly (Kendall tau 0.43, docs/measurements/search.md)
    # 0.1: generalist + experts + the importance trials already cost ~23 % of random search's compute;
    # continuations rarely won (docs/measurements/search.md, session 4)
    subset_fraction: float = Field(0.1, gt=0, le=4)
    rungs: list[float] = Field([1 / 3, 1.0], min_length=1)

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, v: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(v, v[1:])) or v[0] <= 0 or abs(v[-1] - 1.0) > 1e-9:
            raise ValueError("must increase strictly from > 0 to 1.0 (fractions of the subset budget)")
        return v


class Resources(_M):
    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0)
    train_workers: int = Field(1, ge=1)


def _one_of(kind: str, names: tuple[str, ...], v: Any) -> Any:
    """`v` if it is one of `names`, else a validation error listing them (sorted)."""
    if v not in names:
        raise ValueError(f"unknown {kind} {v!r}; valid: {', '.join(sorted(names))}")
    return v


class Scheduler(_M):
    name: SchedulerName = "auto"  # rungs (ranked space) | asha (fine-tune epochs) | fifo
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)

    @field_validator("name", mode="before")
    @classmethod
    def _known(cls, v: Any) -> Any:
        return _one_of("scheduler", SCHEDULERS, v)


class Searcher(_M):
    name: SearcherName = "tpe"
    n_startup_trials: int = Field(4, ge=0)

    @field_validator("name", mode="before")
    @classmethod
    def _known(cls, v: Any) -> Any:
        return _one_of("searcher", SEARCHERS, v)


class Controls(_M):
    scratch: bool = True
    generalist: bool = True  # ranked space: the generalist alone (k = 0), the null every subset must beat
    uniform: bool = True
    importance: bool = True
    imagenet: bool | Literal["auto"] = "auto"  # auto: only when ImageNet weights are on this machine
    importance_temperature: float = Field(1.0, gt=0)
    lr: float | None = Field(None, gt=0)  # fine-tune lr of controls (default: geometric middle of search.lr)
    freeze_depth: int = Field(0, ge=0)


class Image(_M):
    min_side: int = Field(32, ge=8)
    max_side: int = Field(40, ge=8)

    @model_validator(mode="after")
    def _order(self) -> Image:
        if self.max_side < self.min_side:
            raise ValueError("max_side must be >= min_side")
        return self


class Storage(_M):
    """State outside the results dir: Optuna RDB URL (PostgreSQL on a cluster), MLflow tracking URI (an
    `mlflow server`) and the pretraining cache dir (default `<workspace>/cache`). Strings may hold `${VAR}`
    (e.g. a DB password), expanded only when used; see `SweepSpec.storage_value`."""

    optuna: str | None = None
    tracking_uri: str | None = None
    cache: str | None = None

    @field_validator("cache")
    @classmethod
    def _posix(cls, v: str | None) -> str | None:
        if v is not None and is_remote(v):
            raise ValueError("must be a directory on a shared POSIX filesystem (the cache uses flock), not a URL")
        return v


class SweepSpec(_M):
    name: str = Field(pattern=NAME_PATTERN)  # a directory under the workspace: never `.`, `..` or hidden
    workspace: str
    corpus: str
    targets: list[str] = Field(min_length=1)
    backbone: str = "small_cnn"
    image: Image = Image()
    search: Search = Search()
    budget: Budget = Budget()
    resources: Resources = Resources()
    scheduler: Scheduler = Scheduler()
    searcher: Searcher = Searcher()
    seeds: list[int] = Field([0], min_length=1)
    controls: Controls = Controls()
    storage: Storage = Storage()
    # what the search optimises, on the target's val split (rtl.deliver.metrics): top-1 `error` (default),
    # `macro_f1`, `balanced_error`, and -- for targets with an "ok" class -- `defect_recall` (the best
    # defect recall at a false-alarm rate <= `max_false_alarm`) or `auroc` (defect vs ok)
    objective: ObjectiveName = "error"
    max_false_alarm: float = Field(0.05, gt=0, lt=1)
    ok_class: str | None = None  # the "no defect" class (default: ok / good / normal / pass / non_defective)
    spec_file: str = ""  # set by load_spec, for messages

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v: Any) -> Any:
        return _one_of("objective", OBJECTIVES, v)

    @model_validator(mode="after")
    def _resolve_auto(self) -> SweepSpec:
        """scheduler `auto`: successive halving over pretraining rungs for the ranked space, ASHA over
        fine-tune epochs for the bit space; the generalist control exists only in the ranked space."""
        if self.scheduler.name == "auto":
            self.scheduler.name = "rungs" if self.search.sources.space == "ranked" else "asha"
        if self.scheduler.name == "rungs" and self.search.sources.space != "ranked":
            raise ValueError("scheduler rungs needs search.sources.space: ranked")
        if self.search.sources.space != "ranked":
            self.controls.generalist = False
        return self

    @field_validator("workspace")
    @classmethod
    def _shared_fs(cls, v: str) -> str:
        if is_remote(v):
            raise ValueError(
                f"{v!r} is a URL; use a filesystem path shared by every node (e.g. an EFS mount such as "
                "/mnt/efs/rtl): spec.json and the flock-based pretraining cache need POSIX files (MLflow "
                "artifacts may still go to S3 via the tracking server, Optuna to PostgreSQL via storage.optuna)")
        return v

    @field_validator("corpus")
    @classmethod
    def _corpus_inside(cls, v: str) -> str:
        return _inside_workspace(v)

    @field_validator("targets")
    @classmethod
    def _targets_inside(cls, v: list[str]) -> list[str]:
        return [_inside_workspace(t) for t in v]

    # ---- resolved locations -------------------------------------------------------------------------
    @property
    def results_dir(self) -> str:
        return join(self.workspace, self.name)

    def corpus_path(self) -> str:
        return self._rel(self.corpus)

    def target_paths(self) -> list[str]:
        return [self._rel(t) for t in self.targets]

    def target_names(self) -> list[str]:
        return [Path(t).name for t in self.targets]

    def cache_dir(self) -> str:
        return self.storage_value("cache") or join(self.workspace, "cache")

    def optuna_url(self) -> str:
        return self.storage_value("optuna") or f"sqlite:///{os.path.join(self.results_dir, 'optuna.db')}"

    def optuna_url_template(self) -> str:
        """`storage.optuna` as written (`${VAR}` unexpanded): what may be pickled (Ray's `tuner.pkl`
        holds the searcher); expand with `expand_storage` at use time."""
        return self.storage.optuna or f"sqlite:///{os.path.join(self.results_dir, 'optuna.db')}"

    def tracking_uri(self) -> str | None:
        """`storage.tracking_uri` with `${VAR}` expanded (None: let `MLFLOW_TRACKING_URI` / SQLite decide)."""
        return self.storage_value("tracking_uri")

    def storage_value(self, field: str) -> str | None:
        """`storage.<field>` with `$VAR`/`${VAR}` expanded from this process's environment, at use time only:
        the spec object (and so `spec.json`) keeps the reference, never the secret it stands for."""
        raw = getattr(self.storage, field)
        if raw is None:
            return None
        return expand_storage(raw, f"{self.spec_file or self.results_dir}: storage.{field}")

    def _rel(self, p: str) -> str:
        return p if (is_remote(p) or os.path.isabs(p)) else join(self.workspace, p)

    def control_lr(self) -> float:
        return self.controls.lr or math.sqrt(self.search.lr.low * self.search.lr.high)


def is_remote(p: str) -> bool:
    return "://" in p


def join(base: str, *parts: str) -> str:
    """Path under the workspace (always a filesystem path: remote workspaces are refused)."""
    return os.path.join(base, *parts)


_VAR = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand_storage(raw: str, where: str = "storage") -> str:
    """`raw` with `$VAR`/`${VAR}` expanded from the environment; ConfigError naming `where` if one is unset."""
    missing = unset_vars(raw)
    if missing:
        raise ConfigError(f"{where}: environment variable {missing[0]} is not set")
    return os.path.expandvars(raw)


def unset_vars(s: str) -> list[str]:
    """Names referenced as `$VAR` / `${VAR}` in `s` that the environment does not define (in order)."""
    return [a or b for a, b in _VAR.findall(s) if (a or b) not in os.environ]


def _inside_workspace(p: str) -> str:
    """Relative paths are joined to the workspace and must stay inside it; absolute paths are explicit."""
    if not os.path.isabs(p) and not is_remote(p):
        n = os.path.normpath(p)
        if n == ".." or n.startswith(".." + os.sep):
            raise ValueError(f"{p!r} escapes the workspace; use a path inside it or an absolute path")
    return p


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(top level)"


def _msg(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    for pre in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(pre)
    if err["type"] == "greater_than":
        msg = f"must be > {err['ctx']['gt']}"
    elif err["type"] == "greater_than_equal":
        msg = f"must be >= {err['ctx']['ge']}"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field missing"
    elif err["type"] == "string_pattern_mismatch" and err["loc"] == ("name",):
        msg = (f"must match pattern {NAME_PATTERN}: letters, digits, '_', '.', '-', starting with a letter, "
               "digit or '_' (it is a directory under the workspace)")
    return msg.lower() if msg[:1].isupper() and not msg[:2].isupper() else msg


def _union_member(err: dict[str, Any], prev: dict[str, Any]) -> bool:
    """True when `err` is another member of the union field `prev` failed on (same loc but its last part)."""
    loc, ploc = err["loc"], prev["loc"]
    return (len(loc) == len(ploc) > 1 and loc[:-1] == ploc[:-1] and "extra_forbidden" not in (err["type"], prev["type"])
            and isinstance(loc[-1], str) and not _is_field(loc))


def _is_field(loc: tuple[Any, ...]) -> bool:
    """Whether `loc` names a field of a nested spec model (rather than a union member's type tag)."""
    cls: Any = SweepSpec
    for part in loc[:-1]:
        f = getattr(cls, "model_fields", {}).get(part) if isinstance(part, str) else None
        cls = f.annotation if f is not None else None
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return False
    return loc[-1] in cls.model_fields


def spec_from_dict(data: Any, source: str = "<spec>", overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Validate a mapping (YAML already parsed); `overrides` are top-level keys (e.g. workspace)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of fields at the top level")
    data = {**data, **(overrides or {})}
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:  # every field at once (issue 12); a union's members count as one field
        errs = [x for i, x in enumerate(e.errors()) if not (i and _union_member(x, e.errors()[i - 1]))]
        lines = [f"{_loc(x)}: {_msg(x)}" for x in errs]
        raise ConfigError(f"{source}: " + (lines[0] if len(lines) == 1 else
                                           f"{len(lines)} problems: " + "; ".join(lines))) from None
    return spec


def load_spec(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Load and validate a sweep spec YAML; relative workspace resolved against the file's folder."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read spec ({e.strerror or e})") from None
    data = parse_yaml(text, p, ConfigError)
    spec = spec_from_dict(data, str(p), overrides)
    for field, raw in spec.storage.model_dump().items():  # fail now, not hours later in a trial
        missing = unset_vars(raw) if raw else []
        if missing:
            raise ConfigError(f"{p}: storage.{field}: environment variable {missing[0]} is not set")
    ws = spec.workspace
    if not os.path.isabs(ws):
        ws = os.path.normpath(os.path.join(p.resolve().parent, ws))
    return spec.model_copy(update={"workspace": ws, "spec_file": str(p)})


def save_resolved(spec: SweepSpec, path: str) -> None:
    """Write the resolved spec as JSON (what `resume`, `status` and `report` read back). `storage.*` keep
    their `${VAR}` references: secrets are expanded where used, never written here."""
    write_spec_json(spec.model_dump(), path)


def load_resolved(results_dir: str) -> SweepSpec:
    """The spec a sweep was started with, from `<results>/spec.json` (raises ConfigError when absent)."""
    data, path = read_spec_json(results_dir, what="sweep", hint="<workspace>/<sweep name>")
    return spec_from_dict(data, path)
