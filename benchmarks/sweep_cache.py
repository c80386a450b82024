"""Sweep costs, measured against plain baselines in the same run (tiny synthetic corpus/target, CPU):

1. trial time with a pretraining-cache hit vs a cold trial (same mask: the cold one pretrains);
2. Tune's per-trial overhead: N no-op trials through `Tuner.fit` vs calling the function N times.
Prints both ratios.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _work(i: int) -> dict:
    return {"x": i}


def _noop(config: dict) -> None:
    from ray import tune

    tune.report(_work(config["i"]))


def main() -> None:
    import torch
    from sweep_helpers import write_spec

    from rtl.sweep.spec import load_spec
    from rtl.sweep.trial import prepare_init
    from rtl.train.finetune import FinetuneConfig, run_finetune

    torch.set_num_threads(1)
    ws = Path(tempfile.mkdtemp(prefix="rtl-bench-"))
    spec = load_spec(write_spec(ws, name="bench", trials=4,
                                budget={"pretrain_epochs": 3, "finetune_epochs": 2, "trials_per_target": 4,
                                        "max_concurrent": 1, "batch_size": 8}))
    t = {"init": "corpus", "mask": ["a", "b"], "seed": 0, "temperature": 2.0}
    target = spec.target_paths()[0]

    def trial() -> float:
        t0 = time.perf_counter()
        init, _ = prepare_init(spec, t, target, None)
        run_finetune(FinetuneConfig(target=target, init=init, model=spec.backbone, epochs=2, batch_size=8,
                                    min_side=32, max_side=40))
        return time.perf_counter() - t0

    run_finetune(FinetuneConfig(target=target, init="scratch", model="small_cnn", epochs=1, batch_size=8,
                                min_side=32, max_side=40))  # warm imports / decoders
    cold = trial()
    hits = [trial() for _ in range(3)]
    hit = sorted(hits)[1]
    print(f"cold trial (2 pretrainings + importance + fine-tune): {cold:.2f}s; cache-hit trial: {hit:.2f}s; "
          f"cold/hit = {cold / hit:.2f}x")

    import ray
    from ray import tune

    n = 8
    t0 = time.perf_counter()
    for i in range(n):
        _work(i)
    direct = max((time.perf_counter() - t0) / n, 1e-7)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tuner = tune.Tuner(_noop, param_space={"i": tune.grid_search(list(range(n)))},
                       tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
                       run_config=tune.RunConfig(storage_path=str(ws / "ray"), verbose=0))
    t0 = time.perf_counter()
    tuner.fit()
    per_trial = (time.perf_counter() - t0) / n
    ray.shutdown()
    print(f"no-op trial through Tune: {per_trial * 1000:.0f} ms/trial; direct call: {direct * 1e6:.1f} us; "
          f"Tune overhead per trial = {per_trial:.3f}s = {per_trial / hit:.1%} of a cache-hit trial "
          f"(ratio tune/direct = {per_trial / direct:.0f}x)")


if __name__ == "__main__":
    main()
