"""A SIGKILL while Ray re-syncs an experiment dir truncates its files (seen: a 0-byte tuner.pkl, after which
every `rtl sweep resume` died in `Tuner.restore` with EOFError). rtl keeps a copy of tuner.pkl and repairs
the dir before reading it: tuner.pkl comes back byte for byte, a snapshot with a truncated file is set
aside whole so Ray restores the previous one."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from rtl.sweep.search import TUNER_COPY, keep_tuner_copy, repair_experiment_files


def _experiment(d: Path) -> bytes:
    d.mkdir()
    blob = pickle.dumps({"trainable": "x", "config": list(range(50))}, protocol=5)
    (d / "tuner.pkl").write_bytes(blob)
    for ts in ("2026-12-02_10-00-00", "2026-12-02_10-00-30"):
        (d / f"experiment_state-{ts}.json").write_text(json.dumps({"trials": [1, 2, 3], "ts": ts}))
        (d / f"search_gen_state-{ts}.json").write_bytes(pickle.dumps({"gen": ts}))  # Ray: a pickle named .json
        (d / f"searcher-state-{ts}.pkl").write_bytes(pickle.dumps({"ts": ts}))
    return blob


def test_a_truncated_tuner_pickle_comes_back_from_rtls_copy(tmp_path: Path) -> None:
    exp = tmp_path / "tgt"
    blob = _experiment(exp)
    keep_tuner_copy(str(exp))
    assert (exp / TUNER_COPY).read_bytes() == blob
    assert repair_experiment_files(str(exp)) == ([], False)  # nothing to do on a sound dir
    (exp / "tuner.pkl").write_bytes(b"")  # killed mid-sync
    fixed, lost = repair_experiment_files(str(exp))
    assert fixed == [str(exp / "tuner.pkl")] and not lost
    assert pickle.loads((exp / "tuner.pkl").read_bytes()) == pickle.loads(blob)
    (exp / "tuner.pkl").write_bytes(blob[: len(blob) // 2])  # half written
    repair_experiment_files(str(exp))
    assert (exp / "tuner.pkl").read_bytes() == blob


def test_without_a_copy_the_caller_is_told_to_write_it_anew(tmp_path: Path) -> None:
    exp = tmp_path / "tgt"
    _experiment(exp)
    (exp / "tuner.pkl").write_bytes(b"")
    assert repair_experiment_files(str(exp))[1] is True
    keep_tuner_copy(str(exp))  # a truncated file is never copied
    assert not (exp / TUNER_COPY).exists()


def test_a_truncated_snapshot_is_set_aside_whole(tmp_path: Path) -> None:
    exp = tmp_path / "tgt"
    _experiment(exp)
    new = exp / "experiment_state-2026-12-02_10-00-30.json"
    new.write_text(new.read_text()[:10])
    fixed, lost = repair_experiment_files(str(exp))
    assert not lost and len(fixed) == 3  # its experiment, search-generation and searcher states
    left = sorted(p.name for p in exp.iterdir() if "10-00-30" in p.name)
    assert left and all(n.endswith(".truncated") for n in left)
    assert (exp / "experiment_state-2026-12-02_10-00-00.json").is_file()  # Ray restores this one
    (exp / "searcher-state-2026-12-02_10-00-00.pkl").write_bytes(b"\x80\x05")
    assert len(repair_experiment_files(str(exp))[0]) == 3
    assert repair_experiment_files(str(tmp_path / "never-started")) == ([], False)
