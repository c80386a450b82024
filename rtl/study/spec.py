"""Study spec: the YAML of `rtl study run`, validated into a `StudySpec` with one-line errors.

A study is a full grid, not a search: every cell (target x strategy x train size x fine-tune mode x seed)
is run once. Rows are pretraining strategies from `rtl.train.strategies.STRATEGIES`, optionally on a
sub-corpus (`datasets:` or `domains:` tags: "a domain subset such as PCB-only"); columns are fine-tune
modes (`probe: true` = linear probe on frozen features, else fine-tuning with `freeze_depth` and `lr`);
target train sizes are images per class or fractions of each class (rtl.data.subsample: stratified,
seeded, nested; val/test unchanged).

```yaml
name: demo
workspace: ../demo-workspace            # relative to this file; corpus/targets relative to it
corpus: corpus
targets: [data/targets/target_pcb]
strategies:
  - scratch
  - source                               # the whole corpus
  - {name: subset, label: pcb_only, domains: [pcb]}
  - {name: subset, label: related, target_domain: same}   # per target: its own domain's sources
  - {name: weighted, temperature: 2.0}   # importance-weighted (Ngiam et al. 2018)
  - imagenet                             # skipped (listed in the report) without local weights
train_sizes: {per_class: [2, 5, 15]}     # or {fraction: [0.1, 0.5, 1.0]}
modes:
  - {name: probe, probe: true}
  - {name: finetune, freeze_depth: 0, lr: 0.03}
seeds: [0, 1]
```
Layout: `<workspace>/studies/<name>/{spec.json, plan.json, ray_results/, mlflow.db, report/}`; the
pretraining cache is the workspace's (`<workspace>/cache`), shared with sweeps (content-addressed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rtl.artifacts.specfile import read_spec_json, write_spec_json
from rtl.errors import ConfigError
from rtl.sweep.spec import NAME_PATTERN, Image, Resources, _inside_workspace, _loc, _msg, is_remote, join
from rtl.yamlio import parse_yaml

UNSUPPORTED = {"joint": "needs a per-target extra class set; not supported by `rtl study` yet"}


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StrategyRow(_M):
    """One row: a registry strategy, on the whole corpus or a sub-corpus; `label` names the row."""

    name: str
    label: str | None = Field(None, pattern=NAME_PATTERN)
    datasets: list[str] | None = Field(None, min_length=1)
    domains: list[str] | None = Field(None, min_length=1)
    temperature: float | None = Field(None, gt=0)  # weighted only (default 1.0)
    # the sub-corpus follows the target: sources sharing a domain tag with it ("same") or none ("other")
    target_domain: Literal["same", "other"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from rtl.train.strategies import STRATEGIES

        if v in UNSUPPORTED:
            raise ValueError(f"strategy {v!r}: {UNSUPPORTED[v]}")
        if v not in STRATEGIES:
            valid = [n for n in STRATEGIES.names() if n not in UNSUPPORTED]
            raise ValueError(f"unknown strategy {v!r}; valid: {', '.join(valid)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StrategyRow:
        from rtl.train.strategies import STRATEGIES

        st = STRATEGIES.get(self.name)
        if sum(x is not None for x in (self.datasets, self.domains, self.target_domain)) > 1:
            raise ValueError("give one of datasets, domains or target_domain")
        sub = self.datasets or self.domains or self.target_domain
        if not st.trains and sub:
            raise ValueError(f"strategy {self.name!r} does not pretrain: datasets/domains/target_domain do not apply")
        if st.needs_subset and not sub:
            raise ValueError(f"strategy {self.name!r} needs datasets, domains or target_domain")
        if self.temperature is not None and not st.weighted:
            raise ValueError(f"temperature only applies to strategy 'weighted', not {self.name!r}")
        if st.weighted and self.temperature is None:
            self.temperature = 1.0
        return self

    @property
    def row(self) -> str:
        """The row label: `label`, else the strategy name (+ its sub-corpus)."""
        if self.label:
            return self.label
        if self.target_domain:
            return f"{self.name}_{self.target_domain}_domain"
        sub = self.datasets or self.domains
        return self.name + (f"_{'+'.join(sub)}" if sub else "")


class Mode(_M):
    """Fine-tune mode: linear probe on frozen features, or fine-tuning with frozen first stages + lr."""

    name: str = Field(pattern=NAME_PATTERN)
    probe: bool = False
    freeze_depth: int = Field(0, ge=0)
    lr: float = Field(0.03, gt=0)

    @model_validator(mode="after")
    def _probe(self) -> Mode:
        if self.probe and self.freeze_depth:
            raise ValueError("a probe freezes the whole backbone: freeze_depth does not apply")
        return self


class TrainSizes(_M):
    per_class: list[int] | None = Field(None, min_length=1)
    fraction: list[float] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> TrainSizes:
        if (self.per_class is None) == (self.fraction is None):
            raise ValueError("give exactly one of per_class (images per class) or fraction")
        vals = self.values
        if len(set(vals)) != len(vals):
            raise ValueError("sizes must be distinct")
        if self.per_class is not None and min(vals) < 1:
            raise ValueError("per_class sizes must be >= 1")
        if self.fraction is not None and not all(0 < v <= 1 for v in vals):
            raise ValueError("fractions must be in (0, 1]")
        return self

    @property
    def kind(self) -> Literal["per_class", "fraction"]:
        return "per_class" if self.per_class is not None else "fraction"

    @property
    def values(self) -> list[float]:
        return sorted(float(v) for v in (self.per_class if self.per_class is not None else self.fraction))


class Budget(_M):
    """As in sweep specs: `pretrain_budget: steps` gives every sub-corpus the whole corpus' steps."""

    pretrain_epochs: int = Field(2, ge=1)
    pretrain_budget: Literal["steps", "epochs"] = "steps"
    finetune_epochs: int = Field(4, ge=1)
    batch_size: int = Field(32, ge=1)
    max_concurrent: int = Field(2, ge=1)


class Storage(_M):
    tracking_uri: str | None = None
    cache: str | None = None


class StudySpec(_M):
    name: str = Field(pattern=NAME_PATTERN)
    workspace: str
    corpus: str
    targets: list[str] = Field(min_length=1)
    backbone: str = "small_cnn"
    image: Image = Image()
    strategies: list[StrategyRow] = Field(min_length=1)
    train_sizes: TrainSizes
    modes: list[Mode] = Field(min_length=1)
    seeds: list[int] = Field([0], min_length=1)
    pretrain_seed: int = 0  # one pretraining per strategy row, shared by every seed and size
    # folder of `<target>.json` source rankings (`rtl rank --json`, a ranked sweep's `<results>/rankings`):
    # when one exists for a target, the report's similarity comes from its signals (relative to workspace)
    rankings: str | None = None
    budget: Budget = Budget()
    resources: Resources = Resources()
    storage: Storage = Storage()
    spec_file: str = ""

    @field_validator("workspace")
    @classmethod
    def _fs(cls, v: str) -> str:
        if is_remote(v):
            raise ValueError("must be a filesystem path (the pretraining cache needs POSIX files)")
        return v

    @field_validator("corpus")
    @classmethod
    def _corpus_inside(cls, v: str) -> str:
        return _inside_workspace(v)

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        names = [Path(t).name for t in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"two targets share the folder name {dup[0]!r}")
        return [_inside_workspace(t) for t in v]

    @field_validator("rankings")
    @classmethod
    def _rankings_inside(cls, v: str | None) -> str | None:
        return None if v is None else _inside_workspace(v)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @model_validator(mode="after")
    def _unique(self) -> StudySpec:
        for what, names in (("strategies", [s.row for s in self.strategies]), ("modes", [m.name for m in self.modes])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what}: two rows named {dup[0]!r}; give them distinct labels")
        return self

    # ---- locations ----------------------------------------------------------------------------------
    @property
    def results_dir(self) -> str:
        return join(self.workspace, "studies", self.name)

    def corpus_path(self) -> str:
        return self._rel(self.corpus)

    def target_paths(self) -> list[str]:
        return [self._rel(t) for t in self.targets]

    def target_names(self) -> list[str]:
        return [Path(t).name for t in self.targets]

    def cache_dir(self) -> str:
        return self.storage.cache or join(self.workspace, "cache")

    def ranking_path(self, target: str) -> str | None:
        return None if self.rankings is None else os.path.join(self._rel(self.rankings), f"{target}.json")

    def _rel(self, p: str) -> str:
        return p if os.path.isabs(p) else join(self.workspace, p)

    def strategy(self, row: str) -> StrategyRow:
        return next(s for s in self.strategies if s.row == row)

    def mode(self, name: str) -> Mode:
        return next(m for m in self.modes if m.name == name)


def spec_from_dict(data: Any, source: str = "<study>", overrides: dict[str, Any] | None = None) -> StudySpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of fields at the top level")
    try:
        return StudySpec.model_validate({**data, **(overrides or {})})
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"{source}: {_loc(first)}: {_msg(first)}") from None


def load_study_spec(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> StudySpec:
    """Load and validate a study YAML; a relative workspace is resolved against the file's folder."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read study spec ({e.strerror or e})") from None
    spec = spec_from_dict(parse_yaml(text, p, ConfigError), str(p), overrides)
    ws = spec.workspace
    if not os.path.isabs(ws):
        ws = os.path.normpath(os.path.join(p.resolve().parent, ws))
    return spec.model_copy(update={"workspace": ws, "spec_file": str(p)})


def save_resolved(spec: StudySpec, path: str) -> None:
    write_spec_json(spec.model_dump(), path)


def load_resolved(results_dir: str) -> StudySpec:
    """The spec a study ran with, from `<results>/spec.json`."""
    data, path = read_spec_json(results_dir, what="study", hint="<workspace>/studies/<study name>")
    return spec_from_dict(data, path)
