"""Sweep-side MLflow: model logging and the Model Registry (issue 11), plus a re-export of the tracker.

The tracker itself (`Tracker`, `retry`, `default_tracking_uri`, ...) is `rtl.artifacts.tracking`, the bottom
layer every other layer may use; what is here needs `rtl.deliver` (the model folder reader)."""

from __future__ import annotations

import os
from typing import Any

from rtl.artifacts.model_folder import META_FILE, MODEL_FILE
from rtl.artifacts.tracking import (
    EXPERIMENT_KIND,
    TRANSIENT,
    Tracker,
    _fluent_uri,
    _retry,
    _schema_lock,
    default_tracking_uri,
    log_figure_file,
    log_standalone_run,
    mask_params,
    retry,
    source_params,
    tidy_experiment,
)

__all__ = ["EXPERIMENT_KIND", "TRANSIENT", "Tracker", "_fluent_uri", "_retry", "_schema_lock", "default_tracking_uri",
           "download_registered_model", "log_figure_file", "log_standalone_run", "mask_params", "publish_champion",
           "retry", "source_params", "tidy_experiment"]

def publish_champion(tracker: Tracker, target: str, model_dir: str, meta: dict[str, Any], *,
                     registered_name: str, best_trial: int, spec_json: str | None = None,
                     alias: str = "champion") -> str:
    """Log the champion model folder with `mlflow.pytorch.log_model` (signature + input example; the
    rtl folder itself rides along as `extra_files`, so `rtl predict models:/...` loads the weights with
    weights_only=True) under the target's parent run, register it as `registered_name`, point `alias`
    at it, and put the best trial's metrics/params/tags on the parent run. A model already registered
    (same weights digest: a resumed sweep) is not logged again. -> the registered version."""
    import torch

    from rtl.deliver.model import load_model_dir

    c = tracker.client
    parent = tracker.get_or_create_target_run(target)
    sha = meta["sha256"][MODEL_FILE]
    version = None
    try:
        for mv in retry(c.search_model_versions)(f"name='{registered_name}'"):
            if mv.tags.get("rtl.model_sha256") == sha:
                version = str(mv.version)
                break
    except Exception:  # registered model does not exist yet
        version = None
    if version is None:
        lm = load_model_dir(model_dir)
        s = int(meta["preprocess"]["min_side"])
        # (2, C, S, S) normalised input; batch 2, not 1: torch.export (MLflow 3's default "pt2" format, a
        # code-free program) would specialise a batch of 1 and refuse other batch sizes
        example = torch.zeros(2, int(meta["in_channels"]), s, s)
        with torch.no_grad():
            out = lm.model(example).numpy()
        from mlflow.models import infer_signature

        with _fluent_uri(tracker.uri) as mlflow, mlflow.start_run(run_id=parent, experiment_id=tracker.experiment_id):
            info = mlflow.pytorch.log_model(
                lm.model, name="model", signature=infer_signature(example.numpy(), out),
                input_example=example.numpy(),
                extra_files=[os.path.join(model_dir, MODEL_FILE), os.path.join(model_dir, META_FILE)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            # tags at creation: a kill right after registering still leaves the digest a resume looks for
            mv = mlflow.register_model(info.model_uri, registered_name, await_registration_for=30,
                                       tags={"rtl.model_sha256": sha, "rtl.target": target,
                                             "rtl.best_trial": str(best_trial)})
        version = str(mv.version)
    retry(c.set_registered_model_alias)(registered_name, alias, version)
    m = {k: v for k, v in meta.get("metrics", {}).items()
         if isinstance(v, int | float) and v == v and not k.endswith(("_n", "max_false_alarm"))}
    tracker.log_metrics(parent, m)
    prov = meta.get("provenance", {})
    generalist = prov.get("init") == "generalist" or prov.get("control") == "generalist"  # every source, uniform
    tracker.log_params(parent, {"best.sources": ",".join(prov.get("sources") or []) or
                                ("generalist" if generalist else "none"),
                                "best.temperature": prov.get("temperature"), "best.seed": prov.get("seed")})
    tracker.set_tags(parent, {"best_trial": best_trial, "rtl.corpus_version": prov.get("corpus_version"),
                              "rtl.registered_model": f"models:/{registered_name}/{version}",
                              "rtl.champion": f"models:/{registered_name}@{alias}", "rtl.model_dir": model_dir,
                              "rtl.champion_control": prov.get("control") or ""})
    tidy_experiment(tracker, spec_json)
    return version


def download_registered_model(uri: str, dst: str, *, tracking_uri: str | None = None) -> str:
    """`models:/name@alias` (or `/version`) -> local rtl model folder (the logged model's extra files)."""
    from rtl.errors import RtlError

    uri_t = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri_t:
        raise RtlError(f"{uri}: set MLFLOW_TRACKING_URI or --tracking-uri to the sweep's tracking store "
                       "(e.g. sqlite:///<results>/mlflow.db)")
    try:
        with _fluent_uri(uri_t) as mlflow:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst)
    except Exception as e:
        raise RtlError(f"{uri}: not found in {uri_t} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    folder = os.path.join(local, "extra_files")
    if not os.path.isfile(os.path.join(folder, META_FILE)):
        raise RtlError(f"{uri}: not an rtl model (no extra_files/{META_FILE} in the logged model)")
    return folder
