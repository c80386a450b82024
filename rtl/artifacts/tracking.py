"""The MLflow tracker (bottom layer, issue 15): every run of a sweep or study is created, found and written here.

Model logging and the registry (`publish_champion`, `download_registered_model`) live in
`rtl.sweep.tracking`, which re-exports this module: they need the model folder reader (rtl.deliver).

Layout in the tracking store: one experiment per sweep; per target a parent run (`rtl.kind=target`); per
trial a child run (`rtl.kind=trial`, `mlflow.parentRunId`, tag `rtl.trial_id`); per pretraining a run
(`rtl.kind=pretrain`, tag `rtl.cache_key`) that trials link with the tag `rtl.pretrain_run_id`.

Why not Ray's `MLflowLoggerCallback`: it keeps its trial->run map in driver memory, so after
`Tuner.restore` every resumed trial got a second run. Here every run is found by its tags first
(`get_or_create_*`), so a resumed trial — or a trial re-executed after a lost node — re-attaches to its run
and a sweep never has two runs for one trial id. Runs are written from the trial processes
(cluster workers) directly to the tracking URI; the driver only creates the experiment and parents up
front so concurrent trials never race to create them.

Default URI: `sqlite:///<results>/mlflow.db` (SQLite locks under many writers: fine for a laptop with a
few concurrent trials; a cluster sets `MLFLOW_TRACKING_URI` / `storage.tracking_uri` to `mlflow server`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from rtl.artifacts.specfile import SPEC_FILE

T = TypeVar("T")


def default_tracking_uri(results_dir: str, configured: str | None = None) -> str:
    """`MLFLOW_TRACKING_URI` wins, then the spec's `storage.tracking_uri`, then SQLite in the results dir."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{os.path.abspath(os.path.join(results_dir, 'mlflow.db'))}"


# SQLite busy, a tracking server restarting, and two fresh processes racing on MLflow's schema set-up
# (alembic: "Online migration expected to match one row ... 0 found" / "table ... already exists"; seen
# when two trials opened a new sweep's store at once on a loaded machine): all pass when tried again
TRANSIENT = ("locked", "busy", "temporar", "503", "alembic_version", "migration", "already exists")


def retry(fn: Callable[..., T]) -> Callable[..., T]:
    """Retry on SQLite 'database is locked' and transient server errors (a few concurrent writers)."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> T:
        for attempt in range(8):
            try:
                return fn(*a, **kw)
            except Exception as e:  # mlflow wraps sqlalchemy OperationalError in MlflowException
                if attempt == 7 or not any(s in str(e).lower() for s in TRANSIENT):
                    raise
                time.sleep(0.1 * 2**attempt * (1 + random.random()))
        raise AssertionError("unreachable")

    return wrapper


def mask_params(mask: Iterable[str] | None, units: list[str]) -> dict[str, str]:
    """Readable mask (`a,b`) + bit string over the searchable units (`101`), or 'none' (scratch)."""
    if mask is None:
        return {"mask": "none", "mask_bits": ""}
    on = set(mask)
    return {"mask": ",".join(u for u in units if u in on), "mask_bits": "".join("1" if u in on else "0" for u in units)}


def source_params(mask: Iterable[str] | None, units: list[str]) -> dict[str, int]:
    """One param per searchable source, `src.<name>` = 1 if in the mask else 0 (scratch: all 0), so
    MLflow's compare / parallel-coordinates views show each source's effect on the metric."""
    on = set(mask or ())
    return {f"src.{u}": int(u in on) for u in units}


@contextlib.contextmanager
def _schema_lock(uri: str) -> Iterator[None]:
    """Serialise opening a SQLite tracking store across processes (flock on `<db>.lock`).

    MLflow creates or migrates the schema when a process first opens a store; two trials doing it at once
    on a new `mlflow.db` left it half-migrated (`table _alembic_tmp_tags already exists` for every later
    trial, measured on a loaded machine). Servers (http) migrate themselves: no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = uri[len("sqlite:///"):]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class Tracker:
    """Thin wrapper over `MlflowClient` bound to one sweep's experiment."""

    def __init__(self, tracking_uri: str, sweep_name: str, artifact_root: str | None = None) -> None:
        import mlflow  # only here: MLflow is imported by this module alone
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        self.uri = tracking_uri
        with _schema_lock(tracking_uri):  # opening a new SQLite store creates/migrates its schema
            self.client = retry(MlflowClient)(tracking_uri=tracking_uri)
        self.experiment_id = self._get_or_create_experiment(sweep_name, artifact_root)

    @retry
    def _get_or_create_experiment(self, name: str, artifact_root: str | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_root)
        except Exception:  # created concurrently by another process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @retry
    def find_runs(self, tags: dict[str, str]) -> list[Any]:
        """Runs of this experiment whose tags equal `tags` (oldest first)."""
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([self.experiment_id], filter_string=flt, max_results=1000,
                                       order_by=["attributes.start_time ASC"])

    @retry
    def get_or_create(self, match: dict[str, str], tags: dict[str, str], name: str) -> str:
        runs = self.find_runs(match)
        if runs:
            return runs[0].info.run_id
        all_tags = {k: str(v) for k, v in (match | tags).items()}  # a tracking server accepts strings only
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        return run.info.run_id

    def get_or_create_target_run(self, target: str) -> str:
        return self.get_or_create({"rtl.kind": "target", "rtl.target": target}, {}, f"target:{target}")

    def get_or_create_trial_run(self, trial_id: str, *, target: str, name: str,
                                tags: dict[str, str] | None = None) -> str:
        """The trial's run: found by `rtl.trial_id` (re-attach on resume), created under the target run."""
        parent = self.get_or_create_target_run(target)
        extra = {"mlflow.parentRunId": parent, **(tags or {})}
        run_id = self.get_or_create({"rtl.kind": "trial", "rtl.trial_id": trial_id, "rtl.target": target},
                                     extra, name)
        self._set_status(run_id, "RUNNING")
        return run_id

    def log_ranking(self, target: str, ranking: dict[str, Any], table_path: str) -> str:
        """One `ranking` run per target under its target run (table + JSON as artifacts, each source's
        signed gain and signals as metrics) and one nested run per expert (unit, images, generalist key); a
        ranking by specialists (`method: specialists`): its probe losses, no expert runs.
        Idempotent: found again by tags on resume, metrics logged once."""
        parent = self.get_or_create_target_run(target)
        run_id = self.get_or_create({"rtl.kind": "ranking", "rtl.target": target},
                                     {"mlflow.parentRunId": parent}, f"ranking:{target}")
        if self.client.get_run(run_id).info.status != "RUNNING":
            return run_id  # logged by an earlier start
        if ranking.get("method") == "specialists":  # no experts: the specialists' probe losses, once each
            self.log_params(run_id, {"method": "specialists", "verdict": ranking["verdict"][:250],
                                     "suggested": ",".join(ranking["suggested"]), "order": ",".join(ranking["order"])[:500]})
            self.log_metrics(run_id, {f"probe_loss.{x['unit']}": float(x["probe_loss"]) for x in ranking["rows"]})
            self.log_artifact(run_id, table_path)
            self.finish(run_id)
            return run_id
        self.log_params(run_id, {"verdict": ranking["verdict"][:250], "suggested": ",".join(ranking["suggested"]),
                                 "order": ",".join(ranking["order"])[:500], "generalist": ranking["generalist_digest"]})
        for row in ranking["rows"]:
            self.log_metrics(run_id, {f"{k}.{row['unit']}": row[k] for k in ("gain", "gain_std", "probe", "importance")
                                      if isinstance(row.get(k), (int, float))})
            expert = self.get_or_create({"rtl.kind": "expert", "rtl.target": target, "rtl.unit": row["unit"]},
                                         {"mlflow.parentRunId": run_id}, f"expert:{row['unit']}")
            self.log_params(expert, {"unit": row["unit"], "generalist_key": ranking["generalist_digest"],
                                     "images": ranking["cost"]["expert_images"] // max(1, len(ranking["rows"])),
                                     "checkpoint": row.get("expert", "")})
            self.log_metrics(expert, {"gain": row["gain"], "probe": row["probe"]})
            self.finish(expert)
        self.log_artifact(run_id, table_path)
        self.finish(run_id)
        return run_id

    def get_or_create_pretrain_run(self, cache_key: str, params: dict[str, Any],
                                   history: list[dict[str, Any]] = ()) -> str:
        """The run of one cached pretraining: params, and its per-epoch metrics logged once (a later
        trial that hits the cache finds them there and logs nothing again)."""
        run_id = self.get_or_create({"rtl.kind": "pretrain", "rtl.cache_key": cache_key}, {},
                                     f"pretrain:{cache_key[:12]}")
        self.log_params(run_id, params)
        if history and "train_loss" not in self.client.get_run(run_id).data.metrics:
            for row in history:
                self.log_metrics(run_id, {k: row[k] for k in ("train_loss", "images_per_s", "lr") if k in row},
                                 step=int(row.get("epoch", 0)))
            self.finish(run_id)
        return run_id

    def find_pretrain_run(self, cache_key: str) -> str | None:
        runs = self.find_runs({"rtl.kind": "pretrain", "rtl.cache_key": cache_key})
        return runs[0].info.run_id if runs else None

    # ---- writing ------------------------------------------------------------------------------------
    @retry
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params not logged yet (params are immutable: re-logging on resume must be a no-op)."""
        from mlflow.entities import Param

        have = self.client.get_run(run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in have]
        if new:
            self.client.log_batch(run_id, params=new)

    @retry
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        if ms:
            self.client.log_batch(run_id, metrics=ms)

    @retry
    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @retry
    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, path, artifact_path)

    @retry
    def _set_status(self, run_id: str, status: str) -> None:
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status=status)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self._set_status(run_id, status)

    # ---- reading (tests, status, report) ------------------------------------------------------------
    def trial_runs(self, target: str | None = None) -> list[Any]:
        tags = {"rtl.kind": "trial"} | ({"rtl.target": target} if target else {})
        return self.find_runs(tags)


def log_figure_file(tracker: Tracker, run_id: str, path: str, artifact_path: str = "report") -> None:
    """Log a file produced by the report (PNG/Markdown) to a run."""
    tracker.log_artifact(run_id, path, artifact_path)


def log_standalone_run(experiment: str, name: str, *, params: dict[str, Any], history: list[dict[str, Any]],
                       final: dict[str, Any], artifact_dirs: list[str] = (), tracking_uri: str | None = None,
                       ) -> str | None:
    """One MLflow run for a stand-alone `rtl pretrain` / `rtl finetune`, only when a tracking URI is set
    (`MLFLOW_TRACKING_URI` or `tracking_uri`): params, per-epoch metrics (numeric history fields, step =
    epoch), final metrics, and the given folders (e.g. the checkpoint) as artifacts. Returns the run id."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    tracker = Tracker(uri, experiment)
    run = retry(tracker.client.create_run)(tracker.experiment_id, run_name=name, tags={"rtl.kind": experiment})
    run_id = run.info.run_id
    tracker.log_params(run_id, params)
    for row in history:
        step = int(row.get("epoch", 0))
        tracker.log_metrics(run_id, {k: v for k, v in row.items()
                                     if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)},
                            step=step)
    tracker.log_metrics(run_id, {k: v for k, v in final.items() if isinstance(v, int | float) and v == v})
    for d in artifact_dirs:
        retry(tracker.client.log_artifacts)(run_id, d, os.path.basename(os.path.normpath(d)))
    tracker.finish(run_id)
    return run_id


# ---- the deliverable: registered model, readable experiment page (issue 11) ------------------------------
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3 UI: open the runs page, not the GenAI overview


def tidy_experiment(tracker: Tracker, spec_json: str | None = None) -> str:
    """Make the sweep's experiment readable in the MLflow UI (idempotent): experiment kind = model
    training; every pretraining run nested under one `pretraining` parent run (so the top level lists the
    target runs only); corpus version as an experiment tag and `spec.json` logged once (on that parent).
    -> the pretraining parent's run id."""
    c = tracker.client
    retry(c.set_experiment_tag)(tracker.experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND)
    group = tracker.get_or_create({"rtl.kind": "pretrain_group"}, {}, "pretraining")
    for r in tracker.find_runs({"rtl.kind": "pretrain"}):
        if r.data.tags.get("mlflow.parentRunId") != group:
            tracker.set_tags(r.info.run_id, {"mlflow.parentRunId": group})
    if spec_json and os.path.isfile(spec_json):
        import json

        try:
            spec = json.loads(open(spec_json).read())
        except (OSError, ValueError):
            spec = {}
        if SPEC_FILE not in {a.path for a in retry(c.list_artifacts)(group)}:
            tracker.log_artifact(group, spec_json)
        if spec.get("name"):
            retry(c.set_experiment_tag)(tracker.experiment_id, "mlflow.note.content",
                                         f"rtl sweep `{spec['name']}`: one parent run per target (best trial's "
                                         "metrics, registered champion); trials nested below it.")
    versions = {r.data.tags.get("rtl.corpus_version") for r in tracker.find_runs({"rtl.kind": "target"})} - {None}
    if len(versions) == 1:
        retry(c.set_experiment_tag)(tracker.experiment_id, "rtl.corpus_version", versions.pop())
    tracker.finish(group)
    return group


@contextlib.contextmanager
def _fluent_uri(uri: str) -> Any:
    """Point MLflow's fluent API (log_model, download_artifacts) at `uri` for the block only.
    `mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI in os.environ, which
    `default_tracking_uri` would then prefer for every later sweep in this process: restore both."""
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as trk_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    prev = (trk_utils._tracking_uri, reg_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(prev[0])
        mlflow.set_registry_uri(prev[1])
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_retry = retry  # the name callers used before it was public
