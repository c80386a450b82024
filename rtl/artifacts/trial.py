"""A sweep trial's parameters and its pretraining plan, typed (issue 15).

`TrialParams` is what the searcher (rtl.sweep.search) proposes for one trial and what a confirm trial
re-runs; `PretrainPlan` is what the trainable (rtl.sweep.trial) decides to pretrain for it. Both used to
travel as `dict[str, Any]`, so a misspelt key was a KeyError deep in a Ray worker. Now the trainable
parses its config once (`TrialParams.parse`, at the top of `run_trial`) and passes the model on.

Ray Tune and Optuna still see plain dicts (Tune pickles trial configs into its experiment state, Optuna
stores flat params): `TrialParams.to_config()` is the boundary. A config written before this module
existed (keys `number, control, seed, init, mask, temperature, lr, freeze_depth, regularizer,
reg_strength`, plus `kind` for confirm trials) parses unchanged, so a sweep started before resumes.

The closed sets of names a spec or a trial may use live here, once: regularisers, searchers,
schedulers, controls, inits, objectives (rtl.sweep.spec, rtl.train.finetune and the CLIs import them).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rtl.artifacts.validation import validated

RegularizerName = Literal["none", "l2sp", "delta"]  # rtl.train.regularizers (Li et al. 2018; 2019)
SearcherName = Literal["tpe", "random"]
SchedulerName = Literal["auto", "rungs", "asha", "fifo"]
ControlName = Literal["scratch", "generalist", "uniform", "importance", "imagenet"]
InitName = Literal["corpus", "scratch", "imagenet", "generalist"]  # corpus: pretrained on the trial's mask
ObjectiveName = Literal["error", "macro_f1", "balanced_error", "defect_recall", "auroc"]

REGULARIZERS: tuple[str, ...] = get_args(RegularizerName)
SEARCHERS: tuple[str, ...] = get_args(SearcherName)
SCHEDULERS: tuple[str, ...] = get_args(SchedulerName)
CONTROLS: tuple[str, ...] = get_args(ControlName)
OBJECTIVES: tuple[str, ...] = get_args(ObjectiveName)
FIXED_INITS = ("scratch", "imagenet")  # inits that pretrain nothing and use no source
# the ranked space's enqueued "every source, importance-weighted, pretrained from scratch" trial (Ngiam et
# al. 2018): its `rtl.enqueued` label; the only ranked trial that does not continue the generalist
IMPORTANCE_TRIAL = "top-all-imp"


def importance_label(k: int | None = None) -> str:
    """The `rtl.enqueued` label of an importance trial: every source (k None) or the ranking's top-k."""
    return IMPORTANCE_TRIAL if k is None else f"top-{int(k)}-imp"


def is_importance_trial(label: str | None) -> bool:
    """An enqueued importance-weighted trial pretrained from scratch: `top-all-imp` or `top-<k>-imp`."""
    return bool(label) and label.startswith("top-") and label.endswith("-imp")


def fine_tunes_importance_pretraining(params: dict[str, Any], label: str | None) -> bool:
    """An Optuna trial (its params, its `rtl.enqueued` label) that fine-tunes the importance trial's
    pretraining without being it: sampled `pretrain: importance`, or enqueued at an end of the lr range."""
    return params.get("pretrain") == "importance" and not is_importance_trial(label)


def pretrained_sources(user_attrs: dict[str, Any], default: str = "-") -> str:
    """The comma-joined units a finished trial's pretraining used, as reports name them: a picked importance
    candidate's own units (`rtl.candidate_mask`, when a variant changed them) over the trial's mask (`rtl.mask`)."""
    return user_attrs.get("rtl.candidate_mask") or user_attrs.get("rtl.mask", default)


class TrialParams(BaseModel):
    """One trial's configuration. `mask`: the source units pretrained on (None for scratch / ImageNet,
    [] for the generalist alone); `temperature`: importance weights at this temperature, None = off
    (uniform over the mask). `k`/`drop`/`add` name the ranked space's subset (None in the bit space)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    number: int = Field(ge=0)  # the Optuna trial number (a confirm trial: the number it re-runs)
    control: ControlName | Literal[""] = ""  # "" = a searched trial
    seed: int = 0
    kind: Literal["search", "confirm"] = "search"
    enqueued: str = ""  # "top-<k>" / IMPORTANCE_TRIAL: a ranking trial the searcher enqueued (searched)
    init: InitName = "corpus"
    mask: list[str] | None = None
    k: int | None = Field(None, ge=0)
    drop: int | None = Field(None, ge=0)
    add: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, gt=0)
    lr: float = Field(gt=0)
    freeze_depth: int = Field(0, ge=0)
    regularizer: RegularizerName = "none"
    reg_strength: float = Field(0.0, ge=0)
    # ranked space, `pretrain: importance` sampled: fine-tune the importance trial's pretraining (every source,
    # importance-weighted, from scratch: a cache hit once the importance trial ran) with the sampled settings
    importance_init: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> TrialParams:
        if self.init in FIXED_INITS and self.mask is not None:
            raise ValueError(f"init {self.init} uses no source mask")
        if self.init == "generalist" and self.mask:
            raise ValueError("init generalist: the mask must be empty")
        if self.init == "corpus" and not self.mask:
            raise ValueError("init corpus needs a non-empty mask")
        if self.temperature is not None and not self.mask:
            raise ValueError("temperature needs a source mask")
        if (self.importance_init or is_importance_trial(self.enqueued)) and (self.temperature is None or not self.mask):
            raise ValueError(f"the {self.enqueued} trial needs a source mask and a temperature")
        return self

    @classmethod
    def parse(cls, data: Any, source: str = "trial config") -> TrialParams:
        """From a Tune config / a dict as stored by any rtl version; ConfigError (one line) otherwise."""
        return validated(cls, data, lambda loc, msg: f"{source}: {loc}: {msg}", empty_loc="(top level)")

    def to_config(self) -> dict[str, Any]:
        """Plain dict for Ray Tune's config (pickled into the experiment state)."""
        return self.model_dump()

    @property
    def weighted_scratch(self) -> bool:
        """Ranked space: pretrain the mask from scratch with the importance weights instead of continuing
        the generalist -- the enqueued importance trials (`search.sources.importance_trial`,
        `search.sources.importance_top`), and their confirm runs, which carry the label -- and sampled trials
        that fine-tune the importance trial's pretraining (`importance_init`)."""
        return self.importance_init or is_importance_trial(self.enqueued)

    @property
    def searched(self) -> bool:
        return not self.control

    @property
    def mask_label(self) -> str:
        """The `rtl.mask` Optuna attr: "a,b" | "generalist" (k = 0) | "none" (scratch / ImageNet)."""
        if self.mask:
            return ",".join(self.mask)
        return "generalist" if self.init == "generalist" else "none"


class PretrainPlan(BaseModel):
    """What a trial pretrains before fine-tuning (rtl.sweep.trial.pretrain_plan decides it once).

    `strategy`: "none" (scratch / ImageNet / the generalist alone: nothing of the trial's own), "subset"
    (uniform over the mask), "weighted" (importance weights at `temperature`, Ngiam et al. 2018). The bit
    space pretrains the mask from scratch for `epochs` x `samples_per_epoch`; the ranked space continues
    the generalist (`continue_generalist`) for `subset_fraction` of its images in `rungs` (fractions),
    except a `weighted_scratch` trial, pretrained from scratch like the bit space (no rungs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    init: InitName
    space: Literal["bits", "ranked"]
    by: Literal["datasets", "domains"] = "datasets"
    mask: list[str] = []
    strategy: Literal["none", "subset", "weighted"] = "none"
    temperature: float | None = Field(None, gt=0)
    seed: int = 0
    continue_generalist: bool = False
    epochs: int = Field(1, ge=1)
    samples_per_epoch: int | None = Field(None, ge=1)  # None: the subset's own size
    subset_fraction: float | None = Field(None, gt=0)
    rungs: list[float] = []

    @property
    def fixed(self) -> bool:
        """The init exists without pretraining anything for this trial."""
        return self.strategy == "none"

    def view_args(self) -> dict[str, list[str] | None]:
        """Keyword arguments of `open_view` / `PretrainConfig` selecting the mask."""
        units = sorted(self.mask)
        return {"datasets": units, "domains": None} if self.by == "datasets" else {"datasets": None,
                                                                                   "domains": units}
