"""Pretraining cache: hit/miss, two processes with one key build once, a killed builder leaves no entry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rtl.sweep.cache import PretrainCache, cache_key

KEY = dict(corpus_version="v1", mask=["b", "a"], temperature=None, backbone="small_cnn",
           schedule={"epochs": 2}, seed=0)

# a child process that builds `key` slowly and appends its pid to builds.log when its build_fn runs
CHILD = """
import os, sys, time
from pathlib import Path
from rtl.sweep.cache import PretrainCache
root, key, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.01)
def build(d):
    with open(Path(root) / "builds.log", "a") as f:
        f.write(f"{os.getpid()}\\n")
    (d / "part").write_text("half")
    time.sleep(float(sys.argv[4]))
    (d / "model.pt").write_text("done")
print(PretrainCache(root).get_or_create(key, build))
"""


def test_key_is_order_insensitive_and_specific() -> None:
    assert cache_key(**KEY) == cache_key(**{**KEY, "mask": ["a", "b"]})
    for change in ({"mask": ["a"]}, {"temperature": 2.0}, {"seed": 1}, {"backbone": "resnet18"},
                   {"schedule": {"epochs": 3}}, {"corpus_version": "v2"}, {"weights_digest": "ab"}):
        assert cache_key(**{**KEY, **change}) != cache_key(**KEY)


def test_hit_and_miss(tmp_path: Path) -> None:
    cache, calls = PretrainCache(tmp_path), []
    key = cache_key(**KEY)

    def build(d: Path) -> None:
        calls.append(d)
        (d / "model.pt").write_text("x")

    p1 = cache.get_or_create(key, build)
    p2 = cache.get_or_create(key, build)
    assert p1 == p2 and (p1 / "model.pt").read_text() == "x" and len(calls) == 1
    assert (cache.hits, cache.misses) == (1, 1) and cache.stats() == {"hit": 1, "miss": 1}


def _child(tmp_path: Path, key: str, go: Path, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), key, str(go), str(seconds)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def test_two_processes_same_key_build_once(tmp_path: Path) -> None:
    go, key = tmp_path / "go", cache_key(**KEY)
    procs = [_child(tmp_path, key, go, 1.0) for _ in range(2)]
    go.write_text("")
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == str(tmp_path / key)
    assert len((tmp_path / "builds.log").read_text().split()) == 1  # one build, the other waited
    assert PretrainCache(tmp_path).stats() == {"hit": 1, "miss": 1}


def test_killed_builder_leaves_no_entry(tmp_path: Path) -> None:
    go, key = tmp_path / "go", cache_key(**KEY)
    go.write_text("")
    p = _child(tmp_path, key, go, 60.0)
    deadline = time.time() + 60
    while not list((tmp_path / "tmp").glob(f"{key}.*/part")):  # poll until it is mid-build
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    cache = PretrainCache(tmp_path)
    assert not cache.contains(key)  # no half checkpoint a later hit would load
    built = cache.get_or_create(key, lambda d: (d / "model.pt").write_text("ok"))
    assert (built / "model.pt").read_text() == "ok" and not (built / "part").exists()
    assert not list((tmp_path / "tmp").iterdir())  # the dead builder's tmp dir was cleaned


def test_every_source_subset_gets_the_same_pretraining_steps_by_default(tmp_path) -> None:
    """Under the default "steps" budget every mask pretrains on as many examples per epoch as the whole
    searchable corpus holds (a small related subset must not be under-trained); "epochs" opts out."""
    from sweep_helpers import write_spec

    from rtl.sweep.spec import load_spec
    from rtl.sweep.trial import samples_per_epoch
    from rtl.train.strategies import open_view

    spec = load_spec(write_spec(tmp_path))
    full = len(open_view(spec.corpus_path()))
    one = len(open_view(spec.corpus_path(), datasets=[open_view(spec.corpus_path()).datasets[0]]))
    assert one < full and samples_per_epoch(spec) == full
    budget = spec.budget.model_copy(update={"pretrain_budget": "epochs"})
    assert samples_per_epoch(spec.model_copy(update={"budget": budget})) is None
