"""Which Optuna sampler for the ranked space at 10-40 trials: TPE (multivariate, group) vs GPSampler vs random.

Measured on a simulated objective with the ranked space's structure, because one real sweep per
(sampler, budget, replicate) is far beyond 2 CPUs; the simulation is stated as such. Per replicate
(its own rng): a ranking of 12 sources whose true related set is the top `r` (r in 0..3) with one
related source misplaced at rank 4-6 half of the time (what the swap "add" exists for), an error surface

    val_error = 0.40 - 0.06 * |mask ∩ related| + 0.03 * |mask \\ related| / 4 (a little harm per unrelated
                source) + 0.08 * (log10 lr - log10 lr*)^2 + 0.02 * |freeze - f*| + noise N(0, 0.02),

k in 0..12, drop/add in {0, 1, 2}, lr log-uniform [3e-3, 0.1], freeze 0..2. All samplers start from the
same enqueued trials as the sweep (k = 0, 12, 1, 2, 3 at default lr / freeze) and are seeded per
replicate. Reported: mean regret of the best *true* error among the trials picked (by noisy value) after
10, 20, 40 trials, over replicates, with a 95 % interval.

    python benchmarks/sampler_choice.py [--reps 30]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import numpy as np


def surface(rng: np.random.Generator) -> tuple[list[str], set[str], float, int]:
    order = [f"s{i}" for i in range(12)]
    r = int(rng.integers(0, 4))
    related = set(order[:r])
    if r and rng.random() < 0.5:  # one related source misplaced lower in the ranking
        j = int(rng.integers(4, 7))
        related = set(order[:r - 1]) | {order[j]}
    return order, related, float(10 ** rng.uniform(-2.2, -1.3)), int(rng.integers(0, 3))


def true_error(mask: list[str], related: set[str], lr: float, lr_star: float, fd: int, fd_star: int) -> float:
    hit, miss = len(set(mask) & related), len(set(mask) - related)
    return 0.40 - 0.06 * hit + 0.03 * miss / 4 + 0.08 * (math.log10(lr) - math.log10(lr_star)) ** 2 \
        + 0.02 * abs(fd - fd_star)


def run(sampler_name: str, seed: int, n_trials: int) -> list[tuple[float, float]]:
    import optuna

    from rtl.sweep.search import ranked_mask

    rng = np.random.default_rng(seed)
    order, related, lr_star, fd_star = surface(rng)
    noise = np.random.default_rng(seed + 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sampler_name == "tpe":
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=2, multivariate=True, group=True)
        elif sampler_name == "gp":
            sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=2)
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        study = optuna.create_study(sampler=sampler)
    for k in (0, 12, 1, 2, 3):
        study.enqueue_trial({"k": k, "drop": 0, "add": 0, "lr": math.sqrt(3e-3 * 0.1), "freeze_depth": 0})
    out = []
    for _ in range(n_trials):
        t = study.ask()
        k = t.suggest_int("k", 0, 12)
        drop = t.suggest_categorical("drop", [0, 1, 2])
        add = t.suggest_categorical("add", [0, 1, 2])
        lr = t.suggest_float("lr", 3e-3, 0.1, log=True)
        fd = t.suggest_int("freeze_depth", 0, 2)
        err = true_error(ranked_mask(order, k, drop, add), related, lr, lr_star, fd, fd_star)
        observed = err + float(noise.normal(0, 0.02))
        study.tell(t, observed)
        out.append((observed, err))
    best_possible = min(true_error(m, related, lr_star, lr_star, fd_star, fd_star)
                        for m in [ranked_mask(order, k, d, a) for k in range(13) for d in (0, 1, 2) for a in (0, 1, 2)])
    return [(o, e - best_possible) for o, e in out]


def main() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--samplers", nargs="+", default=["tpe", "gp", "random"])
    args = ap.parse_args()
    budgets = (10, 20, 40)
    print(f"{args.reps} replicates; regret of the trial with the best observed value (true error - optimum)")
    print("| sampler | " + " | ".join(f"regret @{b}" for b in budgets) + " | seconds |")
    print("|---|" + "---|" * (len(budgets) + 1))
    res: dict[str, dict[int, list[float]]] = {}
    for name in args.samplers:
        t0 = time.perf_counter()
        res[name] = {b: [] for b in budgets}
        for rep in range(args.reps):
            trace = run(name, rep, max(budgets))
            for b in budgets:
                res[name][b].append(min(trace[:b], key=lambda oe: oe[0])[1])
        cells = []
        for b in budgets:
            v = res[name][b]
            half = 1.96 * statistics.stdev(v) / math.sqrt(len(v))
            cells.append(f"{statistics.mean(v):.4f} ± {half:.4f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {time.perf_counter() - t0:.0f} |", flush=True)
    if "tpe" in res and "random" in res:
        for b in budgets:
            d = np.array(res["tpe"][b]) - np.array(res["random"][b])
            print(f"tpe - random @{b}: mean {d.mean():+.4f} (paired over replicates)")


if __name__ == "__main__":
    main()
