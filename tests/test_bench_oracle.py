"""benchmarks/oracle_sample.py: the subsets sampled from a target's ground truth, and regret against the
better of the proxy oracle (best test of any arm's trial) and the sampled full-fidelity oracle."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_sample_follows_the_ground_truth() -> None:
    from oracle_sample import sample_subsets

    srcs = ["a", "b", "c", "h"]
    s = sample_subsets({"related": ["b", "a"], "harmful": ["h"]}, srcs)
    assert s["related"] == (["a", "b"], None) and s["related_i"] == (["a", "b"], 1.0)
    assert s["single:a"] == (["a"], None) and s["no_harmful"] == (["a", "b", "c"], None)
    assert s["all"] == (srcs, None) and s["all_i"] == (srcs, 1.0)
    none = sample_subsets({"related": [], "harmful": []}, srcs)  # no related source: no related subsets
    assert sorted(none) == ["all", "all_i"]
    assert not any(k.startswith("related_unshifted") for k in s)  # nothing shifted: no unshifted subset


def test_sample_holds_the_related_set_without_its_shifted_sources() -> None:
    from oracle_sample import sample_subsets

    srcs = ["a", "b", "c", "h"]
    s = sample_subsets({"related": ["a", "b", "c"], "shifted": ["b"], "harmful": ["h"]}, srcs)
    assert s["related_unshifted"] == (["a", "c"], None) and s["related_unshifted_i"] == (["a", "c"], 1.0)
    assert s["related"] == (["a", "b", "c"], None)
    only = sample_subsets({"related": ["b"], "shifted": ["b"]}, srcs)  # every related source shifted: none left
    assert "related_unshifted" not in only


def _o(seed: int, target: str, subset: str, test: float, val: float = 0.5) -> dict:
    return {"seed": seed, "target": target, "subset": subset, "test": test, "val": val}


def test_regret_uses_the_better_oracle_and_ranks_the_related_set() -> None:
    from oracle_sample import summarise

    rows = [_o(0, "t", "related", 0.1), _o(0, "t", "related_i", 0.3), _o(0, "t", "all", 0.3),
            _o(0, "t", "all_i", 0.2), _o(0, "u", "related", 0.4), _o(0, "u", "related_i", 0.45),
            _o(0, "u", "all", 0.2), _o(0, "u", "all_i", 0.4)]
    arms = [{"seed": 0, "target": "t", "arm": "x", "test": 0.3, "best_test_any": 0.25},
            {"seed": 0, "target": "t", "arm": "y", "test": 0.25, "best_test_any": 0.25},
            {"seed": 0, "target": "u", "arm": "x", "test": 0.2, "best_test_any": 0.15}]
    s = summarise(rows, arms)
    t, u = s["pairs"]
    assert (t["oracle"], t["related_rank"]) == (0.1, 1)  # sampled beats the proxy on t
    assert (u["oracle"], u["related_rank"]) == (0.15, 2)  # the proxy beats the sample on u
    assert (t["related"]["subset"], u["related"]["subset"]) == ("related", "related")  # the better form
    assert round(s["regrets"]["x"][(0, "t")], 9) == 0.2 and round(s["regrets"]["y"][(0, "t")], 9) == 0.15
    assert round(s["regrets"]["x"][(0, "u")], 9) == 0.05 and (0, "u") not in s["regrets"]["y"]


def test_the_verdict_report_checks_what_the_verdict_said_against_test(capsys) -> None:
    """ranked_search.py --confirm-seeds rows: a named subset counts as held only if it beat both references
    on mean test; a "none" counts as too cautious when the best configuration beat them anyway."""
    from ranked_search import verdict_report

    def row(target: str, related: list, chosen: bool, best: float, gen: float, uni: float) -> dict:
        return {"arm": "a", "target": target, "related": related, "n_seeds": 2, "verdict_chosen": chosen,
                "mean_test": {"best (search)": best, "generalist": gen, "uniform": uni}}

    verdict_report([row("t1", ["s"], True, 0.1, 0.5, 0.6), row("t2", ["s"], True, 0.5, 0.4, 0.6),
                    row("t3", ["s"], False, 0.2, 0.5, 0.3), row("n1", [], False, 0.6, 0.5, 0.7),
                    {"arm": "a", "target": "one-seed", "related": ["s"], "verdict": "x"}])
    out = capsys.readouterr().out
    assert "targets with related sources: names the subset on 2/3 (it beat both references on mean test on 1)" in out
    assert "says none on 1 (the best configuration was better on mean test anyway on 1)" in out
    assert "targets without: names the subset on 0/1" in out and "anyway on 0)" in out


def test_warm_cache_copies_specialists_only_to_an_arm_of_the_same_fraction(tmp_path: Path) -> None:
    """ranked_search.py --warm-from: an arm whose specialists get another fraction builds its own, so the other
    arm's must not land in its cache (they would be counted in its images); the generalist is always shared."""
    from ranked_search import images_consumed, warm_cache

    src = tmp_path / "src"
    for name, images in (("gen0", 100), ("spec-a", 25), ("expert-b", 5)):
        (src / name / "ckpt").mkdir(parents=True)
        (src / name / "ckpt" / "meta.json").write_text(f'{{"history": [{{"images": {images}}}]}}')
    (src / "spec-a" / "specialist.json").write_text('{"unit": "a", "fraction": 0.25, "seed": 0}')
    warm_cache(src, tmp_path / "other", experts=False, fraction=0.2)
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["gen0"]
    assert images_consumed(str(tmp_path / "other")) == 100
    warm_cache(src, tmp_path / "none", experts=False, fraction=None)  # an arm without specialists
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == ["gen0"]
    warm_cache(src, tmp_path / "same", experts=False, fraction=0.25)
    assert sorted(p.name for p in (tmp_path / "same").iterdir()) == ["gen0", "spec-a"]
    (tmp_path / "other" / "spec-own" / "ckpt").mkdir(parents=True)  # built by the arm itself, then a restart:
    warm_cache(src, tmp_path / "other", experts=False, fraction=0.25)  # a seeded cache is left as it is
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["gen0", "spec-own"]
