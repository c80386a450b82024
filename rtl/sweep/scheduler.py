"""Early stopping that never stops the baselines.

ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning") stops weak trials at
rungs. Control trials (scratch, uniform corpus, importance suggestion, ImageNet) are the yardsticks the
report compares against, so they must run their full fine-tuning budget: a control stopped at epoch 1
would make every searched configuration look like a gain. Their results still enter the rungs, so
searched trials are judged against them.

The ranked space's importance trial (every source, importance-weighted, pretrained from scratch) is not
stopped either: its whole pretraining is paid before its first report, so stopping it saves only a
fine-tune while risking the search's most frequent winner on a probe score (docs/measurements/search.md).
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from rtl.artifacts.trial import is_importance_trial


def is_control(config: dict[str, Any]) -> bool:
    """True for the fixed baseline trials the searcher enqueues (config["trial"]["control"] non-empty)."""
    return bool((config.get("trial") or {}).get("control"))


def never_stopped(config: dict[str, Any]) -> bool:
    """Controls, and trials whose expensive part is paid before their first report (the importance trial,
    `TrialParams.weighted_scratch`)."""
    t = config.get("trial") or {}
    return is_control(config) or is_importance_trial(t.get("enqueued")) or bool(t.get("importance_init"))


class ControlAwareASHA(ASHAScheduler):
    """`ASHAScheduler` whose STOP decisions do not apply to control trials (nor to `never_stopped` ones)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        early = result.get(self._time_attr, self._max_t) < self._max_t and not result.get("finished")
        if decision == TrialScheduler.STOP and early and never_stopped(trial.config):
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return decision
