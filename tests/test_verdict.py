"""The report's null verdict and per-source effects (pure functions)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from rtl.report.verdict import source_effects, subset_verdict


def test_subset_named_only_beyond_two_sigma() -> None:
    v = subset_verdict([0.10, 0.12], [0.30, 0.32], [0.25, 0.27], floor=0.01, subset="a,b")
    assert v["chosen"] and v["recommend"] == "subset" and "a,b" in v["message"]
    close = subset_verdict([0.20, 0.24], [0.22, 0.26], [0.30, 0.31], floor=0.01)
    assert not close["chosen"] and close["recommend"] == "generalist"
    assert close["message"].startswith("no subset beats the generalist")
    # the floor (one val image) stops a tiny margin from counting with zero seed spread
    tiny = subset_verdict([0.20], [0.21], [0.22], floor=1 / 30)
    assert not tiny["chosen"]
    assert subset_verdict([0.1], None, None)["chosen"] is False


def test_seed_noise_is_pooled_over_the_configurations_compared() -> None:
    """One noisy reference must not hide a clear gain (benchmark draw 8, grain, seeds [0, 1]: the subset's val
    0.000 on both seeds, the generalist's 0.667 and 0.292); the largest of three one-df stds said "none"."""
    from rtl.sweep.verdict import pooled_std

    pooled = math.sqrt((0.375 ** 2 / 2 + 0.334 ** 2 / 2) / 3)  # 3 df; the largest single std is 0.265
    assert math.isclose(pooled_std([[0.0, 0.0], [0.667, 0.292], [0.667, 0.333]]), pooled)
    assert math.isnan(pooled_std([[0.1], [0.2]]))  # no configuration with two seeds: no estimate
    v = subset_verdict([0.0, 0.0], [0.667, 0.292], [0.667, 0.333], floor=1 / 24, subset="grain_a")
    assert v["chosen"] and math.isclose(v["sigma"], pooled) and "grain_a" in v["message"]
    # the subset's own seeds disagree and its margin is small (draw 8, hatch): still no subset named
    h = subset_verdict([0.292, 0.583], [0.583, 0.625], [0.542, 0.625], floor=1 / 24)
    assert not h["chosen"] and h["recommend"] == "all sources"
    # one seed everywhere: the floor is the noise, as before
    assert subset_verdict([0.20], [0.21], [0.22], floor=1 / 30)["sigma"] == 1 / 30


def _t(mask: str, value: float, state: str = "COMPLETE") -> SimpleNamespace:
    return SimpleNamespace(user_attrs={"rtl.mask": mask}, value=value, state=SimpleNamespace(name=state))


def test_source_effects_with_and_without() -> None:
    trials = [_t("a", 0.1), _t("a,b", 0.12), _t("b", 0.3), _t("generalist", 0.28), _t("none", 0.5),
              _t("a", 0.9, "PRUNED")]
    eff = {r["unit"]: r for r in source_effects(trials, ["a", "b", "c"])}
    assert eff["a"]["effect"] > 0.15 and eff["a"]["n_with"] == 2 and eff["a"]["n_without"] == 2
    assert eff["b"]["effect"] < 0  # including b goes with higher error here
    assert math.isnan(eff["c"]["effect"])  # never in a mask: no estimate
    assert [r["unit"] for r in source_effects(trials, ["a", "b", "c"])][0] == "a"
