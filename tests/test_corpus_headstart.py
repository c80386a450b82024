"""Corpus build's head start (issue 13): the driver decodes the first images while Ray starts.

Whoever decodes which image (driver only, Ray only, or both), the corpus is the same: same rows, same
manifest version, counts, histograms and rejects; every kept image exactly once.
"""

from __future__ import annotations

import threading

import pyarrow.parquet as pq
import pytest

from rtl.data import corpus_build
from rtl.data.corpus import build_corpus, open_corpus

SIDES = {"min_side": 32, "max_side": 40, "progress": False}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from rtl.data.synth import generate_family

    out = tmp_path_factory.mktemp("fam")
    generate_family(out, size="tiny", seed=0)
    src = out / "sources"
    return [src / "pcb_a", src / "film_a"]


def _build(monkeypatch, sources, out, mode: str) -> dict:
    """mode: 'ray' (the driver decodes nothing), 'driver' (Ray 'starts' only once the driver is done),
    'both' (Ray 'starts' after the driver has decoded 5 images)."""
    real_head, real_add = corpus_build._head_start, corpus_build._ShardWork.add
    done, five = threading.Event(), threading.Event()
    added, stops = [], []

    def head(*a, **k):
        stops.append(a[4])  # the build's stop event (set once Ray is up)
        try:
            return [] if mode == "ray" else real_head(*a, **k)
        finally:
            done.set()

    def add(self, row):
        real_add(self, row)
        added.append(row[2])
        if len(added) == 5 and mode == "both":
            five.set()
            stops[0].wait(timeout=60)  # deterministic: Ray is "up" right after the 5th image

    def init_ray(address):  # Ray already runs (ray_session): stand in for a slow start
        (done if mode == "driver" else five if mode == "both" else threading.Event()).wait(
            timeout=60 if mode != "ray" else 0)
        return False

    with monkeypatch.context() as mp:
        mp.setattr(corpus_build, "_head_start", head)
        mp.setattr(corpus_build._ShardWork, "add", add)  # this process only: Ray workers import their own
        mp.setattr(corpus_build, "_init_ray", init_ray)
        return build_corpus(sources, out, cap=3, engine="ray", **SIDES)  # the Ray path's head start


def test_same_corpus_whoever_decodes(sources, tmp_path, monkeypatch, ray_session):
    ms = {mode: _build(monkeypatch, sources, tmp_path / mode, mode) for mode in ("ray", "driver", "both")}
    n_kept = ms["ray"]["n_images_kept"]
    assert ms["ray"]["timings"]["head_start_images"] == 0
    assert ms["driver"]["timings"]["head_start_images"] == n_kept  # all of it before Ray was "up"
    assert ms["both"]["timings"]["head_start_images"] == 5 < n_kept
    keys = ("version", "n_rows_out", "counts_after", "size_hist_before", "size_hist_after", "rejects", "classes")
    for mode in ("driver", "both"):
        assert {k: ms[mode][k] for k in keys} == {k: ms["ray"][k] for k in keys}, mode
    for mode, m in ms.items():
        view = open_corpus(tmp_path / mode)
        t = view.table(columns=["dataset", "source_path", "patch"])
        rows = list(zip(*(t.column(c).to_pylist() for c in ("dataset", "source_path", "patch"))))
        assert len(rows) == len(set(rows)) == m["n_rows_out"], mode  # every image once
        assert sorted(view.files) == sorted(str(tmp_path / mode / s) for s in m["shards"])
        assert sum(pq.ParquetFile(f).metadata.num_rows for f in view.files) == m["n_rows_out"]
        assert not list((tmp_path / mode).glob(".building-*"))
    # the capped images' header reads are done by the driver too when it has time
    assert sum(ms["driver"]["size_hist_before"].values()) == ms["driver"]["n_images_in"]


def test_failed_ray_start_stops_the_head_start_and_leaves_nothing(sources, tmp_path, monkeypatch):
    from rtl.errors import RtlRuntimeError

    started = threading.Event()
    real_add = corpus_build._ShardWork.add

    def add(self, row):
        started.set()
        real_add(self, row)

    def init_ray(address):
        started.wait(timeout=60)  # the driver is decoding when Ray fails to start
        raise RtlRuntimeError("cannot start a local Ray: test")

    monkeypatch.setattr(corpus_build._ShardWork, "add", add)
    monkeypatch.setattr(corpus_build, "_init_ray", init_ray)
    with pytest.raises(RtlRuntimeError, match="cannot start"):
        build_corpus(sources, tmp_path / "c", cap=0, engine="ray", **SIDES)
    assert not (tmp_path / "c").exists()  # a failed first build leaves no folder (no half-written shard)
