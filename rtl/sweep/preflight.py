"""Checks before side effects (issue 12): everything about a sweep spec that can be known without running it.

`preflight(spec)` is the first thing `run_sweep` does and all that `rtl sweep run --dry-run` does. It
writes nothing (no `spec.json`, no results dir, no database file), starts no Ray and no MLflow, and
collects every problem before raising one `ConfigError` listing them (`spec.yaml: 3 problems: a; b; c`),
so a user fixes a spec in one round instead of one Ray start per mistake. Checked:

* the workspace is a directory (or can be created: its nearest existing parent is a writable directory),
  the results dir is not a file; a world-writable workspace or results dir is a warning, because
  `rtl sweep resume` unpickles Tune state from there (docs/cluster.md, "Workspace permissions");
* corpus and target folders exist, target folder names are unique, `search.sources.include` is in the
  corpus;
* the objective: `defect_recall` / `auroc` need an ok class in every target (`ok_class`, else one named
  ok / good / normal / ...) and val images of both kinds; a configured `ok_class` must be a class of each;
* `backbone` is registered (or a timm model when timm is installed); the budget leaves searched trials
  after the control trials; an ImageNet control is possible for the backbone;
* `resources` is finite and, for a local Ray (no `--address`/`RAY_ADDRESS`/`ray start` cluster), fits
  this machine: a trial that can never be scheduled would wait forever;
* the Optuna storage (`${VAR}` expanded here, never printed) is reachable: a connect check only. A SQLite
  file that does not exist yet is not created: its directory must be writable instead. The MLflow
  tracking server, when it is one, answers.

Problems that are only "a service did not answer" raise `RtlRuntimeError` (exit 1, like any unreachable
service); any input problem makes it a `ConfigError` (exit 2).

`replaces_unstarted(spec)` lets `run_sweep` take a corrected spec for a sweep whose earlier start never
ran a trial (no Optuna trial in its studies, no Tune experiment), instead of refusing it as "a different
spec".
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from typing import Any

from rtl.artifacts.layout import RAY_CONFIRM, RAY_RESULTS, spec_path
from rtl.artifacts.manifest import is_corpus
from rtl.artifacts.trial import is_importance_trial
from rtl.errors import ConfigError, RtlError, RtlRuntimeError
from rtl.sweep.spec import SweepSpec, join, load_resolved, ranking_method

CONNECT_TIMEOUT_S = 5


@dataclass
class Plan:
    """What `run_sweep` would do with a spec that passed every check (printed by `--dry-run`)."""

    name: str
    spec_file: str
    results_dir: str
    targets: list[tuple[str, str]]  # (name, path)
    unit_kind: str  # "datasets" | "domains"
    units: list[str]
    trials_per_target: int
    controls: list[tuple[str, int]]  # (control, seed), per target
    searched_per_target: int
    confirm_seeds: list[int]
    resources: str
    optuna: str  # URL with any password masked
    tracking: str
    cache_dir: str
    started: bool  # the results dir already holds spec.json (run = continue it)
    warnings: list[str] = field(default_factory=list)
    candidates: str = ""  # "best of 3 candidates (T 1, 0.5, 2), picked after epoch 1 of 2" or ""
    ranked_by: str = "experts"  # what orders the ranked space: experts (rtl rank) or specialists

    def format(self) -> str:
        ctl = ", ".join(f"{c} (seed {s})" for c, s in self.controls) or "none"
        n_top = sum(c.startswith("top-") for c, _ in self.controls)
        n_imp = sum(is_importance_trial(c) for c, _ in self.controls)
        imp = f", {n_imp} of them importance-weighted from scratch" if n_imp else ""
        imp += f", each the {self.candidates}" if n_imp and self.candidates else ""
        rows = [
            ("sweep", f"{self.name}  ({self.spec_file})"),
            ("results", f"{self.results_dir}" + ("  (exists: run continues it)" if self.started else "  (new)")),
            ("targets", ", ".join(f"{n} ({p})" for n, p in self.targets)),
            ("units", f"{len(self.units)} {self.unit_kind}: {', '.join(self.units)}"),
            ("trials", f"{self.trials_per_target} per target = {self.trials_per_target - self.searched_per_target} "
                       f"control + {self.searched_per_target} searched"
                       + (f" ({n_top} enqueued from the ranking by {self.ranked_by}{imp})" if n_top else "")
                       + f"; {len(self.targets) * self.trials_per_target} in all"),
            ("enqueued", ctl),
            ("confirm", "best searched trial re-run with seeds " + ", ".join(map(str, self.confirm_seeds))
             if self.confirm_seeds else "none (one seed)"),
            ("resources", self.resources),
            ("optuna", self.optuna),
            ("mlflow", self.tracking),
            ("cache", self.cache_dir),
        ]
        return "\n".join(f"{k:<10} {v}" for k, v in rows)


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, bool]] = []  # (one-line text, runtime: a service did not answer)

    def add(self, text: str, runtime: bool = False) -> None:
        self.items.append((" ".join(text.split()), runtime))

    def raise_if_any(self, where: str) -> None:
        if not self.items:
            return
        texts = [t for t, _ in self.items]
        msg = f"{where}: {texts[0]}" if len(texts) == 1 else f"{where}: {len(texts)} problems: " + "; ".join(texts)
        raise (RtlRuntimeError if all(r for _, r in self.items) else ConfigError)(msg)


# ------------------------------------------------------------------------------------------ filesystem
def _existing_parent(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.lexists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def _creatable_dir(path: str) -> str | None:
    """Why `path` cannot be (or become) a directory rtl writes into; None when it can."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            return f"{path} is a file, not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable"
        return None
    parent = _existing_parent(path)
    if not os.path.isdir(parent):
        return f"{parent} is a file, so {path} cannot be created"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be created ({parent} is not writable)"
    return None


def world_writable(path: str) -> str | None:
    """A warning line when `path` (a directory rtl keeps state in) can be written by any user."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IWOTH:
        return (f"{path} is world-writable (mode {stat.S_IMODE(st.st_mode):04o}): any user of this machine can "
                f"plant the state `rtl sweep resume` unpickles; `chmod o-w {path}` (docs/cluster.md)")
    return None


# ------------------------------------------------------------------------------------------ databases
_USERINFO = re.compile(r"(://[^:/@\s]+):[^@\s]*@")


def redact(url: str) -> str:
    """`url` with the password of `user:password@` masked."""
    return _USERINFO.sub(r"\1:***@", url)


def _scrub(msg: str, raw: str) -> str:
    """An error text with the values of the `${VAR}`s of `raw` (secrets) and URL passwords masked."""
    from rtl.sweep.spec import _VAR

    for a, b in _VAR.findall(raw):
        val = os.environ.get(a or b)
        if val:
            msg = msg.replace(val, "***")
    first = next((ln.strip() for ln in msg.splitlines() if ln.strip()), "")
    return redact(first)


def _sqlite_path(url: str) -> str | None:
    """The file of a `sqlite:///...` URL (None for an in-memory database)."""
    from sqlalchemy.engine import make_url

    db = make_url(url).database
    return None if not db or db == ":memory:" else os.path.abspath(db)


def _engine(url: str) -> Any:
    """A SQLAlchemy engine that never creates anything: SQLite files open read-only."""
    import sqlite3

    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        uri = f"file:{path}?mode=ro" if path else "file::memory:"
        return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=30),
                             poolclass=NullPool)
    backend = url.split(":", 1)[0].split("+", 1)[0]
    args = {"connect_timeout": CONNECT_TIMEOUT_S} if backend in ("postgresql", "postgres", "mysql") else {}
    return create_engine(url, connect_args=args, poolclass=NullPool)


def check_storage(url: str, raw: str, field_name: str, problems: _Problems) -> str:
    """Connect check of an RDB URL (Optuna); returns how the plan shows it."""
    shown = redact(raw)
    if url.startswith("sqlite"):
        try:
            path = _sqlite_path(url)
        except Exception as e:  # noqa: BLE001 - malformed URL
            problems.add(f"{field_name}: {shown}: not a database URL ({_scrub(str(e), raw)})")
            return shown
        if path is None:
            problems.add(f"{field_name}: {shown}: an in-memory database loses the study; use a file or a server")
            return shown
        if not os.path.exists(path):
            why = _creatable_dir(os.path.dirname(path))
            if why:
                problems.add(f"{field_name}: {shown}: {why}")
            return f"{shown}  (new file)"
        if os.path.isdir(path):
            problems.add(f"{field_name}: {path} is a directory, not a database file")
            return shown
    try:
        eng = _engine(url)
        try:
            from sqlalchemy import text

            with eng.connect() as conn:
                conn.execute(text("SELECT count(*) FROM sqlite_master" if url.startswith("sqlite") else "SELECT 1"))
        finally:
            eng.dispose()
    except ModuleNotFoundError as e:
        problems.add(f"{field_name}: {shown}: database driver {e.name!r} is not installed")
    except Exception as e:  # noqa: BLE001 - every DB-API/SQLAlchemy failure is one line here
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        if isinstance(e, (ArgumentError, NoSuchModuleError)):
            problems.add(f"{field_name}: {shown}: not a database URL ({_scrub(str(e), raw)})")
        elif url.startswith("sqlite"):
            problems.add(f"{field_name}: {shown}: not a readable database ({_scrub(str(e), raw)})")
        else:
            problems.add(f"{field_name}: cannot connect to {shown} ({_scrub(str(e), raw)})", runtime=True)
    return shown


def _check_tracking(spec: SweepSpec, problems: _Problems, local: bool = True) -> str:
    """MLflow: a local SQLite store's folder is usable (when `local`), a tracking server answers."""
    from rtl.artifacts.tracking import default_tracking_uri

    raw = os.environ.get("MLFLOW_TRACKING_URI") or spec.storage.tracking_uri or ""
    uri = default_tracking_uri(spec.results_dir, spec.tracking_uri())
    shown = redact(raw or uri)
    if uri.startswith("sqlite") and local:
        path = _sqlite_path(uri)
        why = _creatable_dir(os.path.dirname(path)) if path and not os.path.exists(path) else None
        if why:
            problems.add(f"storage.tracking_uri: {shown}: {why}")
    elif uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # it answered (auth, proxy): reachable
        except (OSError, ValueError) as e:
            problems.add(f"storage.tracking_uri: MLflow server {shown} does not answer ({_scrub(str(e), raw)})",
                         runtime=True)
    return shown


def count_trials(url: str, sweep_name: str) -> int:
    """Optuna trials (any state, enqueued ones included) in the studies `<sweep_name>/<target>` at `url`;
    0 for a SQLite file that does not exist or a database without Optuna's tables. Raises on failure."""
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path is None or not os.path.exists(path):
            return 0
    from sqlalchemy import inspect, text

    eng = _engine(url)
    try:
        if not inspect(eng).has_table("studies"):
            return 0
        with eng.connect() as conn:
            ids = [i for i, n in conn.execute(text("SELECT study_id, study_name FROM studies"))
                   if str(n).startswith(f"{sweep_name}/")]
            return sum(conn.execute(text("SELECT count(*) FROM trials WHERE study_id = :i"), {"i": i}).scalar()
                       for i in ids)
    finally:
        eng.dispose()


def never_started(results_dir: str) -> bool:
    """True when the sweep at `results_dir` never started a trial: no Tune experiment and no Optuna trial
    in its studies. Anything unreadable counts as started (never overwrite what might be history)."""
    for sub in (RAY_RESULTS, RAY_CONFIRM):
        p = join(results_dir, sub)
        if os.path.lexists(p) and (not os.path.isdir(p) or os.listdir(p)):
            return False
    try:
        old = load_resolved(results_dir)
        return count_trials(old.optuna_url(), old.name) == 0
    except Exception:  # noqa: BLE001 - unreadable spec.json or storage: keep the old spec
        return False


def replaces_unstarted(spec: SweepSpec) -> bool:
    """True when `spec.json` holds another spec of a sweep that never started a trial: `run_sweep` then
    writes the corrected spec over it (issue 12) instead of refusing it as a different spec."""
    if not os.path.isfile(spec_path(spec.results_dir)):
        return False
    try:
        old = load_resolved(spec.results_dir).model_dump(exclude={"spec_file"})
    except RtlError:
        return False
    if old == spec.model_dump(exclude={"spec_file"}) or not never_started(spec.results_dir):
        return False
    print(f"{spec.results_dir}: the earlier start of {spec.name!r} ran no trial; its spec is replaced by "
          f"{spec.spec_file or 'this one'}", flush=True)
    return True


# ------------------------------------------------------------------------------------------ resources
def _in_process_ray() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def local_cpus(address: str | None) -> float | None:
    """CPUs of the local Ray `ensure_ray` would start; None when a cluster (or a running Ray) decides."""
    from rtl.raystart import _started_cluster, ray_address

    if ray_address(address) or _in_process_ray() or _started_cluster():
        return None
    try:
        from ray._private.utils import get_num_cpus  # what a local Ray counts (cgroup quota aware)

        cpus = float(get_num_cpus())
    except Exception:  # noqa: BLE001 - private API moved: fall back to the affinity mask
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return cpus


def _local_gpus() -> float:
    try:
        import torch

        return float(torch.cuda.device_count())
    except Exception:  # noqa: BLE001
        return 0.0


def _check_resources(spec: SweepSpec, address: str | None, problems: _Problems) -> str:
    r = spec.resources
    bad = [f"resources.{k}: {v} is not a finite number" for k, v in (("cpus", r.cpus), ("gpus", r.gpus))
           if not math.isfinite(v)]
    for b in bad:
        problems.add(b)
    per = f"{r.cpus:g} CPU, {r.gpus:g} GPU per trial" + (f", {r.train_workers} train workers" if r.train_workers > 1
                                                          else "")
    if bad:
        return per
    cpus = local_cpus(address)
    if cpus is None:
        return per + f"; on the Ray cluster at {address or os.environ.get('RAY_ADDRESS') or 'this machine'}"
    # a trial holds its own bundle while its Ray Train pretraining workers take `train_workers` more
    need_cpu = r.cpus + (r.train_workers * max(1, int(r.cpus)) if r.train_workers > 1 else 0)
    need_gpu = r.gpus + (r.train_workers if r.train_workers > 1 and r.gpus > 0 else 0)
    gpus = _local_gpus() if need_gpu > 0 else 0.0
    if need_cpu > cpus:
        problems.add(f"resources.cpus: a trial needs {need_cpu:g} CPUs but this machine has {cpus:g} and no cluster "
                     "address is given (--address / RAY_ADDRESS): it could never be scheduled")
    if need_gpu > gpus:
        problems.add(f"resources.gpus: a trial needs {need_gpu:g} GPUs but this machine has {gpus:g} and no cluster "
                     "address is given (--address / RAY_ADDRESS): it could never be scheduled")
    return per + f"; local Ray ({cpus:g} CPUs" + (f", {gpus:g} GPUs)" if need_gpu > 0 else ")")


# ------------------------------------------------------------------------------------------ model, budget
def _check_backbone(name: str, problems: _Problems) -> bool:
    if name.startswith("timm/"):
        try:
            import timm
        except ImportError:
            problems.add(f"backbone: {name!r} needs timm: pip install 'rtl[timm]'")
            return False
        if not timm.is_model(name.split("/", 1)[1]):
            problems.add(f"backbone: timm has no model {name.split('/', 1)[1]!r}")
            return False
        return True
    from rtl.models.backbones import BACKBONES

    if name not in BACKBONES:
        problems.add(f"backbone: unknown backbone {name!r}; valid: {', '.join(BACKBONES.names())}, timm/<model>")
        return False
    return True


IMAGENET_BACKBONES = ("resnet18", "resnet34", "resnet50")


def _controls(spec: SweepSpec, units: list[str], backbone_ok: bool, problems: _Problems) -> list[tuple[str, int]]:
    """The trials `runner.controls_for` enqueues first, as (name, seed); its budget check as a problem."""
    if spec.controls.imagenet is True and backbone_ok and spec.backbone not in IMAGENET_BACKBONES:
        problems.add(f"controls.imagenet: no ImageNet weights exist for backbone {spec.backbone!r} "
                     f"(only {', '.join(IMAGENET_BACKBONES)}); set it to auto or false")
    from rtl.sweep.runner import controls_for  # the one place that decides them (imports Ray, starts nothing)

    try:
        return [(n, s) for n, s, _ in controls_for(spec, units or ["?"])]
    except RtlError as e:
        problems.add(str(e).removeprefix(f"{spec.spec_file}: "))
    except Exception as e:  # noqa: BLE001 - e.g. units unknown because the corpus is missing (reported)
        if units:
            problems.add(f"controls: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return []


def _check_objective(spec: SweepSpec, targets: list[tuple[str, str]], problems: _Problems) -> None:
    """An objective that needs the "ok" class (rtl.deliver.metrics) on a target without one, or whose
    val split lacks ok or defect images (the metric would be undefined for every trial)."""
    from rtl.data.convention import load_dataset
    from rtl.deliver.metrics import NEEDS_OK_OBJECTIVES
    from rtl.deliver.model import find_ok_class

    objective, configured = getattr(spec, "objective", "error"), getattr(spec, "ok_class", None)
    if objective not in NEEDS_OK_OBJECTIVES and not configured:
        return
    missing, one_kind = [], []
    for name, path in targets:
        try:
            info = load_dataset(path)
        except RtlError as e:
            problems.add(f"targets: {name}: {e}")
            continue
        classes = info.classes()
        try:
            ok = find_ok_class(classes, configured)  # the rule the trials and the model folder use
        except RtlError:  # a configured ok_class that is not a class of this target
            ok = None
        if ok is None:
            missing.append(f"{name} ({', '.join(classes)})")
        elif objective in NEEDS_OK_OBJECTIVES and len({r.label == ok for r in info.split("val")}) < 2:
            one_kind.append(name)
    if missing and configured:
        problems.add(f"ok_class: {configured!r} is not a class of target(s) {'; '.join(missing)}")
    elif missing:
        problems.add(f"objective: {objective} needs an ok (no-defect) class; target(s) without one: "
                     f"{'; '.join(missing)}; set ok_class or choose error, macro_f1 or balanced_error")
    if one_kind:
        problems.add(f"objective: {objective} needs ok and defect images in the val split; target(s) with one "
                     f"kind only: {', '.join(one_kind)}")


# ------------------------------------------------------------------------------------------ entry point
def preflight(spec: SweepSpec, *, address: str | None = None, warn: bool = True) -> Plan:
    """Check `spec` before any side effect; return the plan, or raise one error listing every problem.

    Writes nothing and starts nothing (no Ray, no MLflow run, no database file). Warnings (a
    world-writable workspace) go to stderr when `warn`, and are in `Plan.warnings`."""
    problems = _Problems()
    warnings: list[str] = []
    ws = spec.workspace
    ws_why = _creatable_dir(ws)
    if ws_why:
        problems.add(f"workspace: {ws_why}")
    elif os.path.lexists(spec.results_dir) and not os.path.isdir(spec.results_dir):
        problems.add(f"name: {spec.results_dir} exists and is not a directory")
    for d in (ws, spec.results_dir):
        w = world_writable(d)
        if w:
            warnings.append(w)

    def _reachable(raw: str) -> bool:  # relative paths under a broken workspace: one problem is enough
        return ws_why is None or os.path.isabs(raw)

    units: list[str] = []
    corpus = spec.corpus_path()
    if _reachable(spec.corpus):
        if not is_corpus(corpus):
            problems.add(f"corpus: no corpus at {corpus} (run `rtl corpus build` first)")
        else:
            from rtl.sweep.trial import units_of

            try:
                units = units_of(spec)
            except RtlError as e:
                problems.add(str(e).removeprefix(f"{spec.spec_file}: "))
    targets = list(zip(spec.target_names(), spec.target_paths()))
    for raw, (name, path) in zip(spec.targets, targets):
        if _reachable(raw) and not os.path.isfile(os.path.join(path, "dataset.yaml")):
            problems.add(f"targets: {name}: no dataset at {path}")
    ranking = getattr(getattr(spec.search.sources, "ranking", None), "file", None)  # ranked space: given rankings
    if ranking and getattr(spec.search.sources, "space", "") == "ranked":
        for name, _ in targets:
            rp = spec._rel(ranking.replace("{target}", name))
            if not os.path.isfile(rp):
                problems.add(f"search.sources.ranking.file: {name}: no ranking at {rp}")
    if len({n for n, _ in targets}) != len(targets):
        problems.add("targets: two targets share a folder name")
    _check_objective(spec, [(n, p) for raw, (n, p) in zip(spec.targets, targets)
                            if _reachable(raw) and os.path.isfile(os.path.join(p, "dataset.yaml"))], problems)
    backbone_ok = _check_backbone(spec.backbone, problems)
    controls = _controls(spec, units, backbone_ok, problems)
    resources = _check_resources(spec, address, problems)
    unset = set()  # `${VAR}`s: load_spec checked them, a spec.json read back by `resume` may not have
    for fld in ("optuna", "tracking_uri", "cache"):
        try:
            spec.storage_value(fld)
        except RtlError as e:
            unset.add(fld)
            problems.add(str(e)[str(e).find("storage."):])
    optuna = redact(spec.optuna_url_template())
    if "optuna" not in unset and not (ws_why and spec.storage.optuna is None):  # default: under the workspace
        optuna = check_storage(spec.optuna_url(), spec.optuna_url_template(), "storage.optuna", problems)
    tracking = redact(spec.storage.tracking_uri or "")
    if "tracking_uri" not in unset:
        tracking = _check_tracking(spec, problems, local=ws_why is None)
    cache = spec.storage.cache or join(ws, "cache")
    if spec.storage.cache is not None and "cache" not in unset:
        why = _creatable_dir(spec.cache_dir())
        if why:
            problems.add(f"storage.cache: {why}")
    problems.raise_if_any(spec.spec_file or spec.results_dir)
    if warn:
        for w in warnings:
            print(f"rtl: warning: {w}", file=sys.stderr, flush=True)
    n_searched = spec.budget.trials_per_target - sum(not n.startswith("top-") for n, _ in controls)
    return Plan(name=spec.name, spec_file=spec.spec_file, results_dir=spec.results_dir, targets=targets,
                unit_kind=spec.search.sources.by, units=units, trials_per_target=spec.budget.trials_per_target,
                controls=controls, searched_per_target=n_searched,
                confirm_seeds=[s for s in dict.fromkeys(spec.seeds) if s != spec.seeds[0]],
                resources=resources, optuna=optuna, tracking=tracking, cache_dir=cache,
                started=os.path.isfile(spec_path(spec.results_dir)), warnings=warnings,
                candidates=_candidates_line(spec, len(units), len(targets)),
                ranked_by=("a given file" if spec.search.sources.ranking.file else ranking_method(spec.search.sources)))


def _candidates_line(spec: SweepSpec, n_units: int = 0, n_targets: int = 1) -> str:
    """How an importance trial pretrains when `search.sources.importance_candidates` is set (rtl.sweep.candidates);
    with specialists, what they cost in generalist pretrainings and who shares it (`n_units` 0: unknown)."""
    c = spec.search.sources.importance_candidates
    if c is None or spec.search.sources.importance_trial is None:
        return ""
    t0 = spec.search.sources.importance_trial
    what = (["its own"] if c.own else []) + [v.describe(t0) for v in c.variants]
    e = spec.budget.pretrain_epochs
    n = e * c.split(e)
    spec_cost = ""
    if any(v.specialists for v in c.variants):
        total = n_units * c.specialist_fraction  # per sweep (its first seed), whatever the number of targets
        spec_cost = (f"; specialists: one per {spec.search.sources.by[:-1]}, from scratch on it alone, "
                     f"{c.specialist_fraction:g} of the generalist's images each, on the first seed, shared by "
                     f"every target and seed"
                     + (f" ({n_units} x {c.specialist_fraction:g} = {total:.3g} generalist pretrainings per sweep, "
                        f"{total / max(1, n_targets):.2g} per target)" if n_units else ""))
        if c.specialist_agreement is not None:
            spec_cost += (f"; + the {spec.search.sources.by} whose labels agree with the best-probed one's "
                          f"(kappa >= {c.specialist_agreement:g}, no pretraining)"
                          + ("; the chosen ones that do not agree are dropped" if c.specialist_prune else ""))
    if c.from_specialist:  # the specialists' pick continues its best specialist for the rest of the budget
        spec_cost = (f"; the specialists' pick continues its best specialist for {c.continued_length():g} of the "
                     f"generalist's images" + spec_cost)
    elif c.length < 1:
        spec_cost = f"; {c.length:g} of the generalist's images" + spec_cost
    if len(what) == 1:  # `own: false` with one variant: nothing is compared
        return f"single pretraining on {what[0]} (on its own mask when that leaves no unit){spec_cost}"
    return (f"best of {len(what)} candidates ({'; '.join(what)}), picked by probe after epoch "
            f"{c.cut_epoch(e)} of {n}" + (f" (each of the {e} epochs split in {c.split(e)})" if n > e else "")
            + spec_cost)
