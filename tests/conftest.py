"""Shared fixtures. One local Ray per test session, kept on loopback."""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep local Ray on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs shared by every test of the session that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    # shut down at the very end of the session only
    ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield


# ---- lanes: `make test-fast` runs the tests that start no Ray, no subprocess and no pretraining ------
_SLOW_WORDS = ("subprocess", "Popen", "ray_session", "run_sweep", "resume_sweep", "pretrain_local", "run_pretrain",
               "build_corpus", "rank_target", "run_study", "\"corpus\", \"build\"", "'corpus', 'build'")


def _slow_source(fn) -> bool:
    import inspect

    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return any(w in src for w in _SLOW_WORDS)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: starts Ray, a subprocess or a pretraining (not in `make test-fast`)")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark `slow` every test whose body or fixtures start Ray, a subprocess or a pretraining."""
    for item in items:
        fns = [getattr(item, "function", None)]
        for defs in getattr(item, "_fixtureinfo", None).name2fixturedefs.values() if hasattr(item, "_fixtureinfo") else []:
            fns += [d.func for d in defs if "tests" in getattr(d.func, "__module__", "") or
                    getattr(d, "baseid", "").startswith("tests")]
        if "ray_session" in item.fixturenames or any(f is not None and _slow_source(f) for f in fns):
            item.add_marker(pytest.mark.slow)


# ---- one dataset builder for every test: rtl.data.synth at 32-40 px ------------------------------------
def synth_dataset(root, name: str = "tgt", *, industry: str = "pcb", classes=("ok", "short"),
                  per_split: tuple[int, int, int] | None = (4, 2, 2), per_class: int | dict | None = None,
                  sides: tuple[int, int] = (32, 40), seed: int = 0, fmt: str = "png"):
    """A convention dataset folder at `root` drawn by `rtl.data.synth` (the demo's surfaces and defects).

    A target (`per_split` = train/val/test images per class, fixed splits) unless `per_class` is given:
    then a source dataset (an int for every class or {class: n}), split by `make_splits`. Image sides
    are drawn in `sides`; film/semiconductor are grayscale, the rest RGB. Same arguments -> same bytes."""
    from pathlib import Path

    from rtl.data.synth import Spec, generate_dataset

    if per_class is None:
        spec = Spec(name, industry, dict.fromkeys(classes, 0), sides, fmt=fmt, target=True,
                    split_counts=tuple(per_split))
    else:
        counts = per_class if isinstance(per_class, dict) else dict.fromkeys(classes, int(per_class))
        spec = Spec(name, industry, counts, sides, fmt=fmt)
    generate_dataset(spec, Path(root), "demo", seed)
    return Path(root)


@pytest.fixture(scope="session")
def make_dataset():
    """`make_dataset(root, name, **kw)` -> a synth dataset folder (`synth_dataset`). Session-scoped so
    module- and session-scoped fixtures can build with it too; every call writes under the given root."""
    return synth_dataset


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory) -> dict:
    """Built once per session, READ-ONLY (copy a folder before changing it): name -> folder of
    sources `pcb_a` (ok/short/scratch), `pcb_b` (ok/open/scratch), `film_a` (gray, ok/bubble/scratch),
    8 images per class, and target `target_pcb` (ok/short, 6/2/2 images per class), all 32-40 px."""
    root = tmp_path_factory.mktemp("tiny_family")
    return {
        "pcb_a": synth_dataset(root / "pcb_a", "pcb_a", classes=("ok", "short", "scratch"), per_class=8),
        "pcb_b": synth_dataset(root / "pcb_b", "pcb_b", classes=("ok", "open", "scratch"), per_class=8, seed=1),
        "film_a": synth_dataset(root / "film_a", "film_a", industry="film", classes=("ok", "bubble", "scratch"),
                                per_class=8),
        "target_pcb": synth_dataset(root / "target_pcb", "target_pcb", classes=("ok", "short"), per_split=(6, 2, 2),
                                    seed=2),
    }
