"""Keep the best model of a sweep: per-trial model folders, pruning, export, registration.

Layout: `<results>/models/<target>/trial_<number:04d>_seed<seed>/` (a model folder, rtl.deliver.model).
- Every finished trial logs its inspection metrics (target's test split, val when there is none) to its
  MLflow run; every *searched* and confirm trial also writes its fine-tuned model (`save_trial_model`,
  called from rtl.sweep.trial.run_trial). Control trials keep no weights (baselines, never recommended).
- After a target's search and confirm runs, `deliver_target` (called by the runner) deletes every folder
  except the best searched configuration's (all its seeds) and the next `keep_top - 1` searched trials
  (disk stays bounded), then registers the champion in MLflow and fills the target's parent run.
  "Best" is `rtl.sweep.status.best_searched`: the same definition the report and the confirm runs use.
- `rtl sweep export RESULTS --target T --out DIR` copies the champion folder out (verified on the way).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtl.errors import RtlError

log = logging.getLogger(__name__)

MODELS = "models"


def models_dir(results_dir: str, target: str) -> Path:
    return Path(results_dir) / MODELS / target


def model_folder_name(number: int, seed: int) -> str:
    return f"trial_{int(number):04d}_seed{int(seed)}"


def ok_class_for(spec: Any, classes: list[str]) -> str | None:
    from rtl.deliver.model import find_ok_class

    return find_ok_class(classes, getattr(spec, "ok_class", None))


@torch.no_grad()
def evaluate_probs(model: torch.nn.Module, ds: Any, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), softmax probs (N, K)) of a TargetDataset in eval mode (centre crop), in order."""
    from torch.utils.data import DataLoader

    model.eval()
    ys, ps = [], []
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
        ps.append(torch.softmax(model(x).float(), 1).numpy())  # (B, K)
        ys.append(np.asarray(y))
    k = getattr(model, "num_classes", 0)
    return (np.concatenate(ys) if ys else np.zeros(0, np.int64),
            np.concatenate(ps) if ps else np.zeros((0, k), np.float32))


def finetune_metrics(cfg: Any, res: Any, *, ok_class: str | None = None
                     ) -> tuple[torch.nn.Module, tuple[int, int], str | None, dict[str, Any]]:
    """The fine-tune's selected network, its sides, the ok class and its metrics: val/test error plus
    the inspection metrics on the test split (val when the target has none), keys `<split>_<metric>`."""
    from rtl.data.convention import load_dataset
    from rtl.deliver.metrics import inspection_metrics
    from rtl.deliver.model import find_ok_class, model_from_finetune
    from rtl.train.target_data import TargetDataset

    model, sides = model_from_finetune(cfg, res)
    split = "test" if res.n_images.get("test") else "val"
    ds = TargetDataset(load_dataset(cfg.target), split, classes=res.classes, in_channels=model.in_channels,
                       min_side=sides[0], max_side=sides[1], train=False)
    ok = find_ok_class(res.classes, ok_class)
    y, p = evaluate_probs(model, ds)
    insp = inspection_metrics(y, p, res.classes, ok)
    metrics = {"val_error": res.val_error, "test_error": res.test_error, "eval_split": split,
               **{f"{split}_{k}": v for k, v in insp.items()}}
    return model, sides, ok, metrics


def finetune_model_folder(out: str | Path, cfg: Any, res: Any, *, provenance: dict[str, Any] | None = None,
                          ok_class: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Save a fine-tune's selected weights as a model folder with `finetune_metrics`. -> (folder, metrics)."""
    from rtl.deliver.model import finetune_provenance, save_model_dir

    model, sides, ok, metrics = finetune_metrics(cfg, res, ok_class=ok_class)
    prov = finetune_provenance(cfg, res) | (provenance or {})
    path = save_model_dir(out, model, classes=res.classes, min_side=sides[0], max_side=sides[1], metrics=metrics,
                          provenance=prov, ok_class=ok)
    return path, metrics


def _loggable(metrics: dict[str, Any]) -> dict[str, float]:
    split = metrics["eval_split"]
    return {k: v for k, v in metrics.items() if k.startswith(f"{split}_") and isinstance(v, float) and v == v
            and not k.endswith(("_n", "max_false_alarm"))}


def save_trial_model(spec: Any, target: str, t: dict[str, Any], cfg: Any, res: Any, *, tracker: Any = None,
                     run_id: str | None = None, tags: dict[str, Any] | None = None) -> Path | None:
    """Called by run_trial after fine-tuning: log the inspection metrics of every trial to its MLflow run
    and keep the model folder of searched/confirm trials (controls keep none: baselines are never the
    recommendation). Never fails the trial: problems are logged as warnings."""
    if res.model_state is None:
        return None
    ok_cfg = getattr(spec, "ok_class", None)
    try:
        from rtl.deliver.model import read_model_meta

        if t.get("control"):
            _, _, ok, metrics = finetune_metrics(cfg, res, ok_class=ok_cfg)
            path = None
        else:
            out = models_dir(spec.results_dir, target) / model_folder_name(t["number"], t["seed"])
            prov = {"sweep": spec.name, "target": target, "trial": int(t["number"]), "kind": t.get("kind", "search"),
                    "sources": t.get("mask"), "temperature": t.get("temperature"), "init": t.get("init"),
                    "mlflow_run_id": run_id, **{k: v for k, v in (tags or {}).items() if k.startswith("rtl.")}}
            try:
                prov["corpus_version"] = json.loads((Path(cfg.init) / "meta.json").read_text()).get("corpus_version")
            except (OSError, ValueError):
                prov["corpus_version"] = None
            path, metrics = finetune_model_folder(out, cfg, res, provenance=prov, ok_class=ok_cfg)
            ok = read_model_meta(path, verify=False)["ok_class"]
        if tracker is not None and run_id is not None:
            tracker.log_metrics(run_id, _loggable(metrics))
            tracker.set_tags(run_id, {"rtl.ok_class": ok or "", "rtl.eval_split": metrics["eval_split"]}
                             | ({"rtl.model_dir": str(path),
                                 "rtl.model_sha256": read_model_meta(path, verify=False)["sha256"]["model.pt"]}
                                if path else {}))
        return path
    except Exception as e:  # the trial's result stands even if its model/metrics could not be kept
        log.warning("trial %s: model folder / inspection metrics not saved: %s", t.get("number"), e)
        return None


def kept_models(results_dir: str, target: str, number: int) -> list[tuple[Path, dict[str, Any]]]:
    """Model folders of searched trial `number` (all seeds), best val error first (ties: lower seed)."""
    from rtl.deliver.model import read_model_meta

    out = []
    for d in sorted(models_dir(results_dir, target).glob(f"trial_{number:04d}_seed*")):
        try:
            meta = read_model_meta(d, verify=False)
        except RtlError:
            continue
        out.append((d, meta))
    def key(dm: tuple[Path, dict[str, Any]]) -> tuple[float, int]:
        v = dm[1]["metrics"].get("val_error")
        return (1.0 if v is None else float(v), int(dm[1]["provenance"].get("seed") or 0))

    return sorted(out, key=key)


def prune_models(results_dir: str, target: str, keep_numbers: set[int]) -> list[Path]:
    """Delete model folders of trials not in `keep_numbers` (and stale temp folders). -> deleted."""
    gone = []
    root = models_dir(results_dir, target)
    if not root.is_dir():
        return gone
    for d in root.iterdir():
        name = d.name
        num = int(name[6:10]) if name.startswith("trial_") and name[6:10].isdigit() else None
        if name.startswith(".") or num not in keep_numbers:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


def deliver_target(spec: Any, target: str, *, keep_top: int | None = None) -> Path | None:
    """After a target's search + confirms: prune to the best configurations, register the champion in
    MLflow (`<sweep>.<target>`, alias `champion`), put its metrics on the target's parent run.
    -> the champion's model folder (None when no searched trial completed). Safe to call again (resume)."""
    from rtl.sweep.status import best_searched, target_trials

    best = best_searched(spec.results_dir, target)
    if best is None:
        return None
    keep_top = keep_top or int(getattr(spec, "keep_models", 1) or 1)
    done = sorted((t for t in target_trials(spec.results_dir, target)
                   if t.state.name == "COMPLETE" and not t.user_attrs.get("rtl.control")), key=lambda t: (t.value, t.number))
    prune_models(spec.results_dir, target, {best.number} | {t.number for t in done[:keep_top]})
    kept = kept_models(spec.results_dir, target, best.number)
    if not kept:
        print(f"[{target}] best trial #{best.number} kept no model folder (finished before models were kept?)",
              flush=True)
        return None
    path, meta = kept[0]
    try:
        from rtl.sweep.tracking import publish_champion
        from rtl.sweep.trial import tracker_for

        name = getattr(spec, "registry_name", None) or f"{spec.name}.{target}"
        version = publish_champion(tracker_for(spec), target, str(path), meta, registered_name=name,
                                   best_trial=best.number, spec_json=os.path.join(spec.results_dir, "spec.json"))
        print(f"[{target}] champion: trial #{best.number} -> models:/{name}@champion (version {version})", flush=True)
    except Exception as e:  # the sweep's results stand; `rtl sweep export` still works from the folder
        print(f"[{target}] warning: model not registered in MLflow: {type(e).__name__}: {e}".splitlines()[0],
              flush=True)
    return path


def export_best(results_dir: str, target: str, out: str | Path, *, seed: int | None = None) -> Path:
    """Copy the best searched configuration's model folder of `target` to `out` (verified, atomic)."""
    from rtl.deliver.model import read_model_meta
    from rtl.sweep.spec import load_resolved
    from rtl.sweep.status import best_searched

    spec = load_resolved(results_dir)
    if target not in spec.target_names():
        raise RtlError(f"--target {target!r}: not a target of sweep {spec.name!r} ({', '.join(spec.target_names())})")
    best = best_searched(results_dir, target)
    if best is None:
        raise RtlError(f"{target}: no searched trial has completed yet (see `rtl sweep status {results_dir}`)")
    kept = kept_models(results_dir, target, best.number)
    if seed is not None:
        kept = [(d, m) for d, m in kept if m["provenance"].get("seed") == seed]
    if not kept:
        raise RtlError(f"{target}: no model folder kept for best trial #{best.number}"
                       + (f" and seed {seed}" if seed is not None else "")
                       + f" under {models_dir(results_dir, target)}")
    src = kept[0][0]
    read_model_meta(src)  # refuse to copy a tampered folder
    out = Path(out)
    if out.exists() and not (out / "meta.json").is_file():
        raise RtlError(f"--out {out}: exists and is not a model folder; choose a new path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        shutil.copytree(src, tmp / "m")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "m", out)
        shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise RtlError(f"cannot write {out}: {e.strerror or e}") from None
    return out
