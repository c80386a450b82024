"""Search efficiency on the demo family: TPE + ASHA vs random search + FIFO, same budget, same seeds.

Issue 5, "Measured, not assumed": *TPE + early stopping reaches the best error found by random search
with fewer trials*; and *the best found configuration beats the uniform-corpus control on most targets*.

Per search seed, two sweeps in one workspace (`<workdir>/ws`), identical except for `searcher` and
`scheduler`: `eff-s<seed>-tpe_asha` (TPE, ControlAwareASHA grace 1 / rf 2) and `eff-s<seed>-random_fifo`
(Optuna RandomSampler, FIFO = no early stopping). Same search space, trials per target, concurrency,
pretraining / fine-tune schedule and seed; controls off in both arms, so every trial is a searched one.

Cache fairness: the pretraining cache is content-keyed, and with the same seed TPE's startup trials are
the very configurations the random sampler draws first (TPE samples its startup trials with
`RandomSampler(seed)`), so with one shared cache the arm that runs second would get those pretrainings
for free and look faster. Each arm therefore gets its own cold cache (`storage.cache`), i.e. each pays for
every pretraining it needs (within an arm, targets share the cache, as in a real sweep). The search
itself does not depend on the cache (results are deterministic per key), only the wall-clock does. Arms
alternate their order per seed to spread drift in the machine's (shared) load.

The uniform-corpus control (and scratch, for context) is computed once per seed outside the searches,
with exactly the parameters the runner's control trials use (`control_params`, `prepare_init`,
`run_finetune`), in a separate cache, so it costs neither arm any trial.

Measures per (seed, target, arm): best val error and its test error; trials-to-best = 1 + the Optuna
trial number (= ask order, deterministic; completion order depends on timing) of the first COMPLETE
trial with val <= the best val random search found over the full budget (ties count: val errors are
multiples of 1/|val|); fine-tune epochs up to and including that trial (compute-to-best); for the whole
budget: fine-tune epochs, pretrainings (cache entries built), summed trial seconds, wall-clock.

    python benchmarks/search_efficiency.py [--quick] [--seeds 0 1] [--trials 12] [--workdir /tmp/rtl-search]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

DEMO_WS = Path("/tmp/demo-ws")
ARMS = {"tpe_asha": ("tpe", "asha"), "random_fifo": ("random", "fifo")}
EPS = 1e-9


def make_spec(workdir: Path, corpus: Path, targets: list[Path], arm: str, seed: int, trials: int,
              concurrent: int, tag: str = "") -> Any:
    """The demo sweep (sweeps/demo.yaml search space and schedule) for one arm; controls off."""
    import yaml

    from rtl.sweep.spec import spec_from_dict

    demo = yaml.safe_load((Path(__file__).resolve().parents[1] / "sweeps" / "demo.yaml").read_text())
    searcher, scheduler = ARMS[arm]
    if arm == "tpe_asha":  # --tpe-scheduler / --grace isolate the searcher from the early stopping
        scheduler = os.environ.get("RTL_BENCH_TPE_SCHEDULER", scheduler)
    data = {**demo, "name": f"eff{tag}-s{seed}-{arm}", "workspace": str(workdir / "ws"), "corpus": str(corpus),
            "targets": [str(t) for t in targets], "seeds": [seed],
            "budget": {**demo["budget"], "trials_per_target": trials, "max_concurrent": concurrent},
            "scheduler": {**demo["scheduler"], "name": scheduler,
                          "grace_period": int(os.environ.get("RTL_BENCH_GRACE", demo["scheduler"]["grace_period"]))},
            "searcher": {**demo["searcher"], "name": searcher},
            "controls": {"scratch": False, "uniform": False, "importance": False, "imagenet": False},
            "storage": {"cache": str(workdir / "ws" / f"cache{tag}-s{seed}-{arm}")}}
    return spec_from_dict(data, f"search_efficiency:{arm}")


def n_pretrainings(cache_dir: str) -> int:
    p = Path(cache_dir)
    return sum(1 for d in p.iterdir() if d.is_dir() and len(d.name) == 64) if p.is_dir() else 0


def run_arm(spec: Any) -> float:
    """Run one sweep; -> its wall-clock seconds. A sweep this script already finished is not re-run:
    its wall-clock is read back from `<results>/bench_wall.json` (a restore would time nothing)."""
    from rtl.sweep.runner import run_sweep

    saved = Path(spec.results_dir) / "bench_wall.json"
    if saved.is_file():
        return float(json.loads(saved.read_text())["wall_s"])
    t0 = time.perf_counter()
    run_sweep(spec)
    wall = time.perf_counter() - t0
    saved.write_text(json.dumps({"wall_s": wall, "load": os.getloadavg()}))
    return wall


def arm_trials(spec: Any, target: str) -> list[dict[str, Any]]:
    from rtl.sweep.status import target_trials

    out = []
    for t in sorted(target_trials(spec.results_dir, target), key=lambda t: t.number):
        secs = ((t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start else 0.0)
        out.append({"number": t.number, "state": t.state.name, "value": t.value, "secs": secs,
                    "start": t.datetime_start, "end": t.datetime_complete,
                    "epochs": int(t.user_attrs.get("rtl.epochs", 0)),
                    "test": t.user_attrs.get("rtl.test_error"), "mask": t.user_attrs.get("rtl.mask")})
    return out


def summarize(trials: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    done = [t for t in trials if t["state"] == "COMPLETE"]
    best = min(done, key=lambda t: (t["value"], t["number"]), default=None)
    hit = next((t for t in done if t["value"] <= threshold + EPS), None)  # trials sorted by number
    starts = [t["start"] for t in trials if t["start"]]
    ends = [t["end"] for t in trials if t["end"]]
    return {
        "n": len(trials), "complete": len(done), "pruned": sum(t["state"] == "PRUNED" for t in trials),
        "failed": sum(t["state"] == "FAIL" for t in trials),
        "best_val": best["value"] if best else None, "best_test": best["test"] if best else None,
        "best_number": best["number"] if best else None, "best_mask": best["mask"] if best else None,
        "to_best": hit["number"] + 1 if hit else None,
        "epochs_to_best": sum(t["epochs"] for t in trials if hit and t["number"] <= hit["number"]) if hit else None,
        "epochs": sum(t["epochs"] for t in trials), "trial_s": sum(t["secs"] for t in trials),
        "span_s": (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0,
    }


def controls(spec: Any, target: str, cache_dir: str) -> dict[str, dict[str, float]]:
    """Uniform-corpus and scratch controls with the runner's control parameters (no Ray, 1 thread)."""
    import torch

    from rtl.sweep.search import control_params
    from rtl.sweep.trial import prepare_init, units_of
    from rtl.train.finetune import FinetuneConfig, run_finetune

    torch.set_num_threads(1)
    units, seed = units_of(spec), spec.seeds[0]
    spec = spec.model_copy(update={"storage": spec.storage.model_copy(update={"cache": cache_dir})})
    path = dict(zip(spec.target_names(), spec.target_paths()))[target]
    out = {}
    for name in ("uniform", "scratch"):
        p = control_params(name, spec, units)
        t = {"init": "scratch" if name == "scratch" else "corpus", "mask": None if name == "scratch" else units,
             "temperature": None, "seed": seed}
        init, _ = prepare_init(spec, t, path, None)
        res = run_finetune(FinetuneConfig(
            target=path, init=init, model=spec.backbone, lr=p["lr"], freeze_depth=p.get("freeze_depth", 0),
            reg="none", epochs=spec.budget.finetune_epochs, seed=seed, batch_size=spec.budget.batch_size,
            min_side=spec.image.min_side, max_side=spec.image.max_side, device="cpu"))
        out[name] = {"val": float(res.val_error), "test": float(res.test_error)}
    return out


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 target, 8 trials (smoke run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--trials", type=int, default=None, help="trials per target per arm (default 12; quick 8)")
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--targets", nargs="+", default=["target_pcb", "target_film"])
    ap.add_argument("--workdir", default="/tmp/rtl-search")
    ap.add_argument("--corpus", default=None, help="corpus dir (default <workdir>/corpus, built when absent)")
    ap.add_argument("--fresh", action="store_true", help="delete this run's sweeps first (else finished ones are reused)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--tpe-scheduler", choices=["asha", "fifo"], default="asha",
                    help="scheduler of the TPE arm (fifo: compare searchers alone; the arm keeps its name)")
    ap.add_argument("--grace", type=int, default=None, help="ASHA grace period (default: sweeps/demo.yaml)")
    args = ap.parse_args()
    os.environ["RTL_BENCH_TPE_SCHEDULER"] = args.tpe_scheduler  # read by make_spec (workers never need it)
    if args.grace is not None:
        os.environ["RTL_BENCH_GRACE"] = str(args.grace)
    trials = args.trials or (8 if args.quick else 12)
    names = args.targets[:1] if args.quick else args.targets
    work = Path(args.workdir)
    data = DEMO_WS / "data"  # the demo family of `rtl demo --workspace /tmp/demo-ws`, else our own
    if not (data / "relations.json").is_file():
        from rtl.data.synth import generate_family

        data = work / "data"
        if not (data / "relations.json").is_file():
            generate_family(data, size="demo", seed=0)
    targets = [data / "targets" / n for n in names]
    corpus = Path(args.corpus) if args.corpus else work / "corpus"
    if not (corpus / "manifest.json").is_file():
        from rtl.data.corpus import build_corpus

        sources = sorted(p for p in (data / "sources").iterdir() if p.is_dir())
        build_corpus(sources, corpus, min_side=32, max_side=40, cap=300, seed=0, max_downscale=16.0,
                     min_defect_px=0.0)

    import ray

    ray.init(num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False, configure_logging=False)
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    rows, ctrl = [], {}
    for i, seed in enumerate(args.seeds):
        order = list(ARMS) if i % 2 == 0 else list(ARMS)[::-1]  # alternate which arm runs first
        specs = {a: make_spec(work, corpus, targets, a, seed, trials, args.concurrent,
                               "-quick" if args.quick else "") for a in ARMS}
        walls = {}
        for arm in order:
            if args.fresh:
                shutil.rmtree(specs[arm].results_dir, ignore_errors=True)
                shutil.rmtree(specs[arm].cache_dir(), ignore_errors=True)
            print(f"== seed {seed}: {arm} ({specs[arm].results_dir})", flush=True)
            walls[arm] = run_arm(specs[arm])
        t0 = time.perf_counter()
        for n in names:
            ctrl[(seed, n)] = controls(specs["tpe_asha"], n, str(work / "ws" / "cache-controls"))
        ctrl_s = time.perf_counter() - t0
        for n in names:
            per = {a: arm_trials(specs[a], n) for a in ARMS}
            rnd = [t["value"] for t in per["random_fifo"] if t["state"] == "COMPLETE"]
            thr = min(rnd) if rnd else float("nan")
            for a in ARMS:
                s = summarize(per[a], thr)
                rows.append({"seed": seed, "target": n, "arm": a, "threshold": thr, "wall_s": walls[a],
                             "pretrainings": n_pretrainings(specs[a].cache_dir()), **s,
                             "uniform": ctrl[(seed, n)]["uniform"], "scratch": ctrl[(seed, n)]["scratch"],
                             "controls_s": ctrl_s})
    total = time.perf_counter() - t_all
    ray.shutdown()
    report(rows, trials, total, load0)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


def aggregate(rows: list[dict[str, Any]]) -> None:
    """Over all (seed, target) pairs: who reaches random's best first, means, total compute."""
    import statistics as st

    pairs = [(rows[i], rows[i + 1]) for i in range(0, len(rows), 2)]
    big = 10 ** 6  # "not reached" ranks last
    fewer = sum((a["to_best"] or big) < (b["to_best"] or big) for a, b in pairs)
    same = sum((a["to_best"] or big) == (b["to_best"] or big) for a, b in pairs)
    print(f"\nTPE+ASHA reaches random's best in fewer trials: {fewer}/{len(pairs)}; same: {same}; "
          f"more or never: {len(pairs) - fewer - same}")
    print("\n| arm | mean trials-to-best (reached) | reached | mean best val | mean its test | "
          "fine-tune epochs (sum) | trial-s (sum) | wall-clock (sum) | pretrainings (sum) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        hit = [r["to_best"] for r in rs if r["to_best"] is not None]
        walls = {(r["seed"]): (r["wall_s"], r["pretrainings"]) for r in rs}
        print(f"| {arm} | {st.mean(hit) if hit else float('nan'):.1f} | {len(hit)}/{len(rs)} "
              f"| {st.mean(r['best_val'] for r in rs):.3f} | {st.mean(r['best_test'] for r in rs):.3f} "
              f"| {sum(r['epochs'] for r in rs)} | {sum(r['trial_s'] for r in rs):.0f} "
              f"| {sum(w for w, _ in walls.values()):.0f} s | {sum(p for _, p in walls.values())} |")


def report(rows: list[dict[str, Any]], trials: int, total: float, load0: tuple[float, ...]) -> None:
    print(f"\nbudget {trials} trials/target/arm; trials-to-best = 1 + Optuna number of the first COMPLETE trial "
          "with val <= best val of random search (full budget)\n")
    print("| seed | target | arm | best val | its test | trials-to-best | epochs-to-best | complete/pruned "
          "| fine-tune epochs | trial-s (sum) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tb = r["to_best"] if r["to_best"] is not None else f"not reached (>{r['n']})"
        print(f"| {r['seed']} | {r['target']} | {r['arm']} | {_f(r['best_val'])} | {_f(r['best_test'])} | {tb} "
              f"| {_f(r['epochs_to_best'])} | {r['complete']}/{r['pruned']} | {r['epochs']} | {r['trial_s']:.0f} |")
    print("\n| seed | arm | wall-clock (all targets) | pretrainings (cold cache) |")
    print("|---|---|---|---|")
    seen = set()
    for r in rows:
        if (r["seed"], r["arm"]) not in seen:
            seen.add((r["seed"], r["arm"]))
            print(f"| {r['seed']} | {r['arm']} | {r['wall_s']:.0f} s | {r['pretrainings']} |")
    print("\n| seed | target | uniform val / test | scratch val / test | best TPE+ASHA val / test | "
          "best random val / test | best (any arm, by val) beats uniform on test? |")
    print("|---|---|---|---|---|---|---|")
    wins = n = 0
    for i in range(0, len(rows), 2):
        a, b = rows[i], rows[i + 1]
        u, s = a["uniform"], a["scratch"]
        best = min((a, b), key=lambda r: (r["best_val"] if r["best_val"] is not None else 9, r["arm"] != "tpe_asha"))
        win = best["best_test"] is not None and best["best_test"] < u["test"] - EPS
        wins, n = wins + win, n + 1
        print(f"| {a['seed']} | {a['target']} | {u['val']:.3f} / {u['test']:.3f} | {s['val']:.3f} / {s['test']:.3f} "
              f"| {_f(a['best_val'])} / {_f(a['best_test'])} | {_f(b['best_val'])} / {_f(b['best_test'])} "
              f"| {'yes' if win else 'no'} ({best['arm']}) |")
    print(f"\nbest searched configuration beats uniform control on test: {wins}/{n} (seed, target) pairs")
    aggregate(rows)
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"total {total / 60:.1f} min; load average at start {load0[0]:.1f}; now: {up}")


if __name__ == "__main__":
    main()
