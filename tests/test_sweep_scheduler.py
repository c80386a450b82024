"""Control trials are baselines: ASHA may stop searched trials early, never a control."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from rtl.sweep.scheduler import ControlAwareASHA


def _trial(tid: str, control: str = "", scratch: bool = False) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, config={"trial": {"number": 0, "control": control,
                                                           "enqueued": "top-all-imp" if scratch else ""}})


def _decisions(control_of_worst: str, scratch: bool = False) -> dict[str, str]:
    sched = ControlAwareASHA(time_attr="epoch", metric="val_error", mode="min", max_t=4, grace_period=1,
                             reduction_factor=2, brackets=1)
    good = [_trial(f"good{i}") for i in range(3)]
    worst = _trial("worst", control_of_worst, scratch)
    for t in [*good, worst]:
        sched.on_trial_add(None, t)
    out = {}
    for t in good:
        out[t.trial_id] = sched.on_trial_result(None, t, {"epoch": 1, "val_error": 0.1})
    out["worst"] = sched.on_trial_result(None, worst, {"epoch": 1, "val_error": 0.9})
    return out


def test_searched_trial_is_stopped_but_control_with_same_scores_continues() -> None:
    assert _decisions("")["worst"] == TrialScheduler.STOP
    assert _decisions("scratch")["worst"] == TrialScheduler.CONTINUE


def test_control_still_stops_at_the_end_of_its_budget() -> None:
    sched = ControlAwareASHA(time_attr="epoch", metric="val_error", mode="min", max_t=2, grace_period=1)
    t = _trial("c", "uniform")
    sched.on_trial_add(None, t)
    assert sched.on_trial_result(None, t, {"epoch": 2, "val_error": 0.5}) == TrialScheduler.STOP


def test_importance_trial_paid_before_its_first_report_is_not_stopped() -> None:
    """Its from-scratch pretraining is sunk at the first rung: stopping it would save only a fine-tune."""
    assert _decisions("", scratch=True)["worst"] == TrialScheduler.CONTINUE
