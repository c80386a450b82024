"""benchmarks/paired_regret.py: the pooled comparison the closing notes quote. The oracle of a (seed,
target) is the best test error of any arm in that draw's file; pairs are only those both arms ran; the
images ratio is per seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _row(seed: int, target: str, arm: str, test: float, images: int, best_any: float | None = None) -> dict:
    return {"seed": seed, "target": target, "arm": arm, "test": test, "images": images, "best_test_any": best_any}


def test_pooled_pairs_use_each_draws_oracle(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from paired_regret import compare

    d5 = [_row(0, "t1", "a", 0.2, 30), _row(0, "t1", "b", 0.3, 100), _row(0, "t1", "c", 0.1, 50),
          _row(0, "t2", "a", 0.4, 30), _row(0, "t2", "b", 0.4, 100, best_any=0.35),
          _row(1, "t1", "a", 0.5, 20)]  # seed 1: arm b never ran -> no pair
    d6 = [_row(0, "t1", "a", 0.1, 40), _row(0, "t1", "b", 0.0, 80)]
    files = []
    for name, rows in (("d5", d5), ("d6", d6)):
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = compare(files, "a", "b")
    # d5 t1: oracle 0.1 (arm c) -> a 0.1, b 0.2; t2: oracle 0.35 (b's other trials) -> 0.05 - 0.05 = 0
    assert [round(x, 9) for x in r["per_draw"]["d5"]] == [-0.1, 0.0]
    assert [round(x, 9) for x in r["per_draw"]["d6"]] == [0.1]
    assert len(r["diffs"]) == 3 and [(d, s, round(x, 2)) for d, s, x in r["ratios"]] == [("d5", 0, 0.3), ("d6", 0, 0.5)]
    assert compare(files, "a", "b", seeds=[1])["diffs"] == []
