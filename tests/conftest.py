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
