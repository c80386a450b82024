"""Where things live under a sweep's (or study's) results dir. One place for the names, so the runner,
status, report, export and preflight agree on them.

```
RESULTS/
  spec.json                       the resolved spec (rtl.artifacts.specfile), owner-only
  optuna.db                       the Optuna study (default storage)
  ray_results/<target>[.topup<k>] Tune experiments (search); ray_confirm/ for confirm runs
  rankings/<target>.json|.txt     the target's source ranking (rtl.artifacts.ranking) and its table
  models/<target>/trial_<NNNN>_seed<S>/   model folders of searched/confirm trials (rtl.artifacts.model_folder)
  report/report.md, figures       `rtl sweep report`
```
"""

from __future__ import annotations

import os

from rtl.artifacts.specfile import SPEC_FILE

OPTUNA_DB = "optuna.db"
RAY_RESULTS = "ray_results"
RAY_CONFIRM = "ray_confirm"
RANKINGS = "rankings"
MODELS = "models"
REPORT = "report"
REPORT_MD = "report.md"

__all__ = ["SPEC_FILE", "OPTUNA_DB", "RAY_RESULTS", "RAY_CONFIRM", "RANKINGS", "MODELS", "REPORT", "REPORT_MD",
           "spec_path", "ranking_path", "models_dir", "model_folder_name", "report_dir"]


def spec_path(results_dir: str) -> str:
    return os.path.join(results_dir, SPEC_FILE)


def ranking_path(results_dir: str, target: str, ext: str = "json") -> str:
    """`rankings/<target>.json` (the ranking) or `.txt` (its printed table)."""
    return os.path.join(results_dir, RANKINGS, f"{target}.{ext}")


def models_dir(results_dir: str, target: str) -> str:
    return os.path.join(results_dir, MODELS, target)


def model_folder_name(number: int, seed: int) -> str:
    return f"trial_{int(number):04d}_seed{int(seed)}"


def report_dir(results_dir: str) -> str:
    return os.path.join(results_dir, REPORT)
