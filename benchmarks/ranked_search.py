"""Ranked search vs random search over bits vs TPE + ASHA over bits: quality and pretraining compute.

Issue "A source search that beats random search at a third of its pretraining compute". Per (search
seed, target), three sweeps with the same trials per target, fine-tune schedule and seed, each with its
own COLD pretraining cache (so each arm pays for everything it needs, ranking included):

* `ranked`       -- the CURRENT default (so its rows mean what the code of their day shipped: session 5's
                    rows predate `importance_init`, which the explicit `ranked_ii` arm names; since
                    session 8 it is `ranked_drop12q`, since session 12 `ranked_speconly`, since session 13
                    `ranked_speconly_r`, since session 16 `ranked_speconly_rag`, since session 17
                    `ranked_speconly_ragp`): top-k of the target's ranking (by the specialists) + swaps, controls generalist / all sources, the enqueued importance
                    trial (on the sources whose specialists probe best; + its pretraining fine-tuned at the lr
                    ends), top-1..3, subset pretraining
                    continues the generalist in rungs, successive halving on a probe score (`rungs`);
* `random_bits`  -- one bit per source, Optuna RandomSampler, FIFO (no early stopping), controls off;
* `tpe_asha_bits`-- one bit per source, TPE, ASHA over fine-tune epochs, controls off.

Compute = pretraining images consumed by the arm = the sum over its cache entries of the images in their
meta history (generalist, experts, rung continuations, bit-subset pretrainings). Quality per (seed,
target, arm): best val error of a COMPLETE searched-or-control trial, its test error, the chosen subset;
regret = its test error minus the lowest test error of any arm's best-by-val trial on that (seed,
target) -- a proxy for the oracle subset (the exhaustive full-fidelity oracle is out of reach on 2 CPUs:
2^N subsets), say so when reporting. Jaccard of the chosen subset with the family's related set
(relations.json); correct null = on a target without related source, the ranked arm's verdict says no
source helps. Paired Wilcoxon signed-rank test of regret (ranked vs random_bits) over (seed, target).

`--confirm-seeds 2` runs each sweep on seeds [s, s + 1] as users do: each row then also holds the sweep's
verdict with its null and the mean test errors it compares, and the report says whether what the verdict
said held on test (session 15).

    python benchmarks/ranked_search.py [--family demo|hard] [--targets t1 t2] [--seeds 0 1 2] [--trials 12]

Prints a table and `ratio images ranked/random` and `median regret ranked vs random`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]


def rtl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rtl.cli", *args], check=True, stdout=subprocess.DEVNULL)


def family(workdir: Path, name: str, sides: tuple[int, int], cap: int, seed: int) -> tuple[Path, dict[str, Any]]:
    data, corpus = workdir / f"data-{name}", workdir / f"corpus-{name}"
    if not (data / "relations.json").exists():
        rtl("synth", str(data), "--size", name, "--seed", str(seed))
    if not (corpus / "manifest.json").exists():
        rtl("corpus", "build", *sorted(str(p) for p in (data / "sources").iterdir()), "--out", str(corpus),
            "--min-side", str(sides[0]), "--max-side", str(sides[1]), "--cap", str(cap), "--seed", "0")
    return corpus, json.loads((data / "relations.json").read_text())


def seeds_tag(n_seeds: int) -> str:
    """Suffix of a sweep's workspace and cache names when it runs confirm seeds (never mixed with one-seed runs)."""
    return f"-c{n_seeds}" if n_seeds > 1 else ""


def make_spec(workdir: Path, corpus: Path, targets: list[str], arm: str, seed: int, trials: int,
              sides: tuple[int, int], n_seeds: int = 1) -> Any:
    import yaml

    from rtl.sweep.spec import spec_from_dict

    if arm in REPORT_ONLY:
        raise SystemExit(f"arm {arm}: its code is gone (rows kept for the report only); see docs/measurements")
    d = yaml.safe_load((ROOT / "sweeps" / "demo.yaml").read_text())
    tag = seeds_tag(n_seeds)
    data = corpus.parent / f"data-{corpus.name.split('-', 1)[1]}"
    d.update(name=f"b-{arm}-s{seed}{tag}", workspace=str(workdir / "ws"), corpus=str(corpus),
             seeds=list(range(seed, seed + n_seeds)), targets=[str(data / "targets" / t) for t in targets])
    d["image"] = {"min_side": sides[0], "max_side": sides[1]}
    d["budget"]["trials_per_target"] = trials
    d["storage"] = {"cache": str(workdir / "caches" / f"{arm}-s{seed}{tag}")}
    if arm.startswith("ranked"):
        d["search"]["sources"] = {"by": "datasets", "space": "ranked"}
        if arm != "ranked":  # named arms keep their meaning when the default changes: one importance
            d["search"]["sources"]["importance_candidates"] = None  # pretraining unless they set candidates
        d["scheduler"] = {"name": "rungs", "reduction_factor": 3}
        # ranked_imp: + the importance control (Ngiam et al. 2018: every source, importance-weighted)
        d["controls"] = {"scratch": False, "generalist": True, "uniform": True, "importance": arm == "ranked_imp",
                         "imagenet": False}
        if arm == "ranked_full":  # diagnostic: a subset continues the generalist for all of its images, not 1/4
            d["budget"]["subset_fraction"] = 1.0
        if arm == "ranked_top":  # + a second from-scratch importance trial: the ranking's top third at T = 2
            d["budget"]["subset_fraction"] = 0.1
            d["search"]["sources"]["importance_top"] = {"fraction": 1 / 3, "temperature": 2.0}
        if arm == "ranked_cand":  # the importance trial = best of 3 candidates picked at epoch 1 of 2: every
            d["budget"]["subset_fraction"] = 0.1  # source at T 1, the ranking's top 3 at T 1, every source at T 2
            d["search"]["sources"]["importance_candidates"] = {"variants": [{"top": 3}, {"temperature": 2.0}],
                                                               "cut": 0.5, "own": True}
        if arm == "ranked_ii":  # sampled trials may fine-tune the importance trial's pretraining (pretrain: importance)
            d["budget"]["subset_fraction"] = 0.1
            d["search"]["sources"]["importance_init"] = True
        if arm == "ranked_cand_t":  # session 6's first try: temperatures only (T 1, 0.5, 2); seed 1 of draw 4
            d["budget"]["subset_fraction"] = 0.1
            d["search"]["sources"]["importance_candidates"] = {"variants": [{"temperature": 0.5},
                                                                            {"temperature": 2.0}], "cut": 0.5, "own": True}
        if arm in ("ranked_drop1", "ranked_drop12", "ranked_drop12q"):  # session 7: + candidates without the
            d["budget"]["subset_fraction"] = 0.1  # importance mass leader (and the runner-up), picked at epoch 1
            d["search"]["sources"]["importance_init"] = True  # of 2; session 8 (q): after a quarter (1 of 4 halves)
            drops = [{"drop": [1]}] + ([{"drop": [2]}] if arm != "ranked_drop1" else [])
            d["search"]["sources"]["importance_candidates"] = {"variants": drops,
                                                               "cut": 0.25 if arm == "ranked_drop12q" else 0.5,
                                                               "own": True}
        if arm in ("ranked_names", "ranked_names4"):  # session 9: candidates keep the sources with the target's
            d["budget"]["subset_fraction"] = 0.1  # class names (all of them; then without their mass leader),
            d["search"]["sources"]["importance_init"] = True  # after a quarter; names4: + the default's drop [1]
            names = [{"names": 1.0}, {"names": 1.0, "drop": [1]}]
            d["search"]["sources"]["importance_candidates"] = {
                "variants": ([{"drop": [1]}] if arm == "ranked_names4" else []) + names, "cut": 0.25, "own": True}
        if arm.startswith("ranked_spec"):  # session 10: + a candidate on the sources whose from-scratch
            # specialists probe best (rtl.sweep.specialists), after a quarter; spec3: + the default's two drops;
            # speconly (the default since session 12): that set alone, one pretraining
            d["budget"]["subset_fraction"] = 0.1
            d["search"]["sources"]["importance_init"] = True
            v = [{"specialists": True}] + ([{"drop": [1]}, {"drop": [2]}] if arm == "ranked_spec3" else [])
            d["search"]["sources"]["importance_candidates"] = {"variants": v, "cut": 0.25,
                                                               "own": arm in ("ranked_spec", "ranked_spec3")}
            if arm == "ranked_speconly_h":  # session 12: its one pretraining gets half of the generalist's images
                d["search"]["sources"]["importance_candidates"]["length"] = 0.5
            if arm == "ranked_speconly_k2":  # session 12: the chosen set is cut from the best 3, not 5
                d["search"]["sources"]["importance_candidates"]["specialist_max_k"] = 2
            if arm == "ranked_speconly_w":  # session 13: its one pretraining continues the best specialist for
                d["search"]["sources"]["importance_candidates"]["from_specialist"] = True  # 0.75 of the budget
            # session 13: the ranked space ordered by the specialists (no experts) -- the default since (`auto`);
            # the other specialists arms keep the experts' order they were measured with
            d["search"]["sources"]["ranking"] = {"method": "specialists" if arm in (
                "ranked_speconly_r", "ranked_speconly_r20", "ranked_speconly_ra", "ranked_speconly_rag",
                "ranked_speconly_ragp", "ranked_speconly_ragp2", "ranked_speconly_ragp20") else "experts"}
            if arm in ("ranked_speconly_r20", "ranked_speconly_ragp20"):  # session 13: r with specialists on 0.2
                d["search"]["sources"]["importance_candidates"]["specialist_fraction"] = 0.2  # of the generalist's
            # images; session 18: ragp20 = the shipped default (ragp) with specialists on 0.2
            # session 16: + the units whose labels agree with the best-probed unit's, when its own labels read the
            # target's (rtl.sweep.agreement; the default since); every other specialists arm was measured without
            d["search"]["sources"]["importance_candidates"]["specialist_agreement"] = (
                0.2 if arm in ("ranked_speconly_rag", "ranked_speconly_ragp", "ranked_speconly_ragp2",
                               "ranked_speconly_ragp20") else None)
            # session 17: + the prune -- the probe's cut keeps only the members whose labels agree with the anchor's
            # (ragp2: the same settings, rows of the code where a cut member sharing only `ok` + one defect name
            # with the anchor is judged, not dropped -- rtl.sweep.agreement.MIN_SHARED_CUT = 2)
            d["search"]["sources"]["importance_candidates"]["specialist_prune"] = arm in (
                "ranked_speconly_ragp", "ranked_speconly_ragp2", "ranked_speconly_ragp20")
        if arm == "ranked_lean":  # continuations get 1/10 of the generalist's images, not 1/4 (compute arithmetic:
            d["budget"]["subset_fraction"] = 0.1  # generalist + experts + importance trials ~ 23 % of random's)
    else:
        d["search"]["sources"] = {"by": "datasets", "space": "bits"}
        d["scheduler"] = {"name": "fifo"} if arm == "random_bits" else {"name": "asha", "grace_period": 2,
                                                                         "reduction_factor": 2}
        d["searcher"] = {"name": "random" if arm == "random_bits" else "tpe", "n_startup_trials": 3}
        d["controls"] = {"scratch": False, "uniform": False, "importance": False, "imagenet": False}
    return spec_from_dict(d, "benchmark")


def warm_cache(src: Path, dst: Path, *, experts: bool, fraction: float | None) -> None:
    """Copy `src`'s generalist (the one full-budget entry without class weights), its specialists built on
    `fraction` of the generalist's images (their `specialist.json` says; an arm with another fraction, or none,
    builds its own and must not count the others' images) and, when `experts`, experts into `dst` (must not hold
    any entry yet)."""
    import shutil

    if not src.is_dir():
        raise SystemExit(f"--warm-from: no cache at {src}")
    if dst.exists() and any(p.name.startswith(("spec-", "expert-")) or (p / "ckpt" / "meta.json").is_file()
                            for p in dst.iterdir()):
        return  # seeded by an earlier start of this run
    dst.mkdir(parents=True, exist_ok=True)
    for e in src.iterdir():
        gen = (e / "ckpt" / "meta.json").is_file() and "-" not in e.name and not (e / "weights.json").exists()
        spec = (e.name.startswith("spec-") and (e / "specialist.json").is_file()
                and json.loads((e / "specialist.json").read_text()).get("fraction") == fraction)
        if gen or spec or (experts and e.name.startswith("expert-")):
            shutil.copytree(e, dst / e.name)


def images_consumed(cache_dir: str) -> int:
    """Images in the history of every cache entry; a candidate's cut whose full run exists is skipped (the
    full run's history starts with the cut's epochs: rtl.sweep.candidates)."""
    from rtl.sweep.candidates import prefix_of

    total = 0
    for meta in Path(cache_dir).glob("*/ckpt/meta.json"):
        full = prefix_of(meta.parent.parent)
        if full and (Path(cache_dir) / full / "ckpt" / "meta.json").exists():
            continue
        total += sum(int(h.get("images", 0)) for h in json.loads(meta.read_text()).get("history", []))
    return total


def best_of(results_dir: str, target: str) -> dict[str, Any]:
    from rtl.artifacts.trial import fine_tunes_importance_pretraining, pretrained_sources
    from rtl.sweep.status import target_trials

    trials = target_trials(results_dir, target)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    best = min(done, key=lambda t: (t.value, t.number))
    mask = candidate_mask_of(results_dir, best) or pretrained_sources(best.user_attrs, "none")
    tests = [t.user_attrs["rtl.test_error"] for t in done if t.user_attrs.get("rtl.test_error") is not None]
    # val trajectory in trial order: trials needed to reach another arm's best val
    traj = [(t.number, t.value) for t in sorted(done, key=lambda t: t.number)]
    return {"val": best.value, "test": best.user_attrs.get("rtl.test_error"),
            "mask": [] if mask in ("none", "generalist") else mask.split(","),
            "effective": effective_of(results_dir, best), "enqueued": best.user_attrs.get("rtl.enqueued", "") or (
                "imp-init" if fine_tunes_importance_pretraining(best.params, None) else ""),
            "n_done": len(done),
            "n_pruned": sum(t.state.name == "PRUNED" for t in trials), "best_test_any": min(tests, default=None),
            "traj": traj}


def _weights_path(results_dir: str, best: Any) -> str | None:
    """The weights file the trial's MLflow run links (one lookup per trial: the sources and the effective
    sources of a row both need it)."""
    return _run_weights_path(results_dir, best.user_attrs.get("rtl.tune_trial_id"))


@functools.cache
def _run_weights_path(results_dir: str, tid: str | None) -> str | None:
    from rtl.sweep.spec import load_resolved
    from rtl.sweep.trial import tracker_for

    runs = tracker_for(load_resolved(results_dir)).find_runs({"rtl.kind": "trial", "rtl.trial_id": tid}) if tid else []
    return next((r.data.tags["rtl.weights_path"] for r in runs if r.data.tags.get("rtl.weights_path")), None)


def candidate_mask_of(results_dir: str, best: Any) -> str:
    """Sweeps run before `rtl.candidate_mask` existed: the units of the importance candidate whose full
    pretraining the best trial fine-tuned, read from that candidate's cut (cut.json names its full entry);
    "" when it is not a candidate's or its units are the trial's own."""
    if "rtl.candidate_mask" in best.user_attrs or not best.user_attrs.get("rtl.effective_sources"):
        return ""
    wp = _weights_path(results_dir, best)
    if not wp:
        return ""
    entry = Path(wp).parent
    for cut in entry.parent.glob("cut-*/cut.json"):
        c = json.loads(cut.read_text())
        if c.get("full") == entry.name:
            own = best.user_attrs.get("rtl.mask", "")
            return "" if sorted(own.split(",")) == sorted(c["mask"]) else ",".join(c["mask"])
    return ""


def effective_of(results_dir: str, best: Any) -> list[str] | None:
    """Sources a weighted best trial drew 90 % of its pretraining images from (rtl.sweep.trial.
    effective_sources): its `rtl.effective_sources` attr, else (sweeps run before the attr existed) its
    MLflow run's weights file. None: the trial used no importance weights."""
    eff = best.user_attrs.get("rtl.effective_sources")
    if not eff:
        from rtl.sweep.trial import effective_sources

        eff = effective_sources(_weights_path(results_dir, best))
    return eff.split(",") if eff else None


def verdict_of(spec: Any, target: str) -> dict[str, Any]:
    """The sweep's verdict with its null on `target` (as its report prints it) and the mean test errors over
    the seeds of what it compares: the best searched configuration (its confirm runs included), the
    generalist and all sources."""
    from rtl.sweep.verdict import summarize_target, target_verdict

    name = Path(target).name
    s = summarize_target(spec.results_dir, name)
    v = target_verdict(spec, name, s) or {}
    tests = {k: s["rows"][k]["test"][0] for k in ("best (search)", "generalist", "uniform") if k in s["rows"]}
    return {"verdict_chosen": v.get("chosen"), "verdict_recommend": v.get("recommend"),
            "verdict_message": v.get("message"), "verdict_sigma": v.get("sigma"),
            "confirm_seeds": s["confirm_seeds"], "mean_test": tests}


def _test_gain(r: dict[str, Any]) -> float:
    """> 0: the best searched configuration beat both references on mean test (nan: a value missing)."""
    m = r["mean_test"]
    refs = [m[k] for k in ("generalist", "uniform") if m.get(k) is not None]
    return min(refs) - m["best (search)"] if refs and m.get("best (search)") is not None else float("nan")


def verdict_report(rows: list[dict[str, Any]]) -> None:
    """Rows of sweeps with confirm seeds (`--confirm-seeds`): how often the sweep's verdict named the subset,
    and whether what it said held on the mean test error over the seeds (named: the subset beat the generalist
    and all sources; "none": it did not beat the better of them)."""
    vs = [r for r in rows if r.get("n_seeds", 1) > 1 and r.get("verdict_chosen") is not None]
    for arm in sorted({r["arm"] for r in vs}):
        for label, rr in (("with related sources", [r for r in vs if r["arm"] == arm and r["related"]]),
                          ("without", [r for r in vs if r["arm"] == arm and not r["related"]])):
            if not rr:
                continue
            named = [r for r in rr if r["verdict_chosen"]]
            none = [r for r in rr if not r["verdict_chosen"]]
            print(f"\nverdict of {arm} ({rr[0]['n_seeds']} seeds), targets {label}: names the subset on "
                  f"{len(named)}/{len(rr)} (it beat both references on mean test on {sum(_test_gain(r) > 0 for r in named)}); "
                  f"says none on {len(none)} (the best configuration was better on mean test anyway on "
                  f"{sum(_test_gain(r) > 0 for r in none)})")


def run_env() -> dict[str, str]:
    """Where a row was measured. Rows reproduce bit for bit on the same machine type whatever the load or the
    session (session 18), not across machine types: torch and OpenBLAS pick their kernels by CPU, and a float
    summed in another order sends training elsewhere -- compare rows of one `env` only."""
    import platform

    import numpy
    import torch

    return {"cpu": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
            "cores": str(os.cpu_count()), "torch": torch.__version__, "numpy": numpy.__version__}


def jaccard(a: list[str], b: list[str]) -> float:
    return 1.0 if not a and not b else len(set(a) & set(b)) / len(set(a) | set(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["demo", "hard"], default="demo")
    ap.add_argument("--family-seed", type=int, default=1,
                    help="rtl synth seed of the family (1: a draw not used while developing the ranking)")
    ap.add_argument("--targets", nargs="+", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--arms", nargs="+", default=["ranked", "random_bits", "tpe_asha_bits"],
                    help="also: ranked_imp = ranked + the importance control; ranked_full = subset_fraction 1; "
                         "ranked_lean = subset_fraction 0.1")
    ap.add_argument("--workdir", default="/tmp/rtl-ranked")
    ap.add_argument("--rows", default=None,
                    help="JSONL file: rows of finished (seed, arm) sweeps are appended; a (seed, arm) already in "
                         "it is not run again, and the report covers every row in it (run arms in pieces)")
    ap.add_argument("--warm-from", default=None, metavar="ARM",
                    help="before an arm's sweep, copy ARM's generalist, specialists and (when the arm ranks by "
                         "experts) experts of the same seed into the arm's empty cache: the same entries under the "
                         "same keys, counted in its images as if built (a change that reuses them is compared on "
                         "the same specialists; session 13)")
    ap.add_argument("--confirm-seeds", type=int, default=1, metavar="K",
                    help="run each sweep with seeds [seed .. seed + K - 1], as users do (sweeps/demo.yaml: 2): "
                         "controls on every seed and the best configuration confirmed on the others, so each row "
                         "also holds the sweep's verdict with its null and the test errors it compares (session 15)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--rescan", action="store_true",
                    help="recompute each row's best trial (its sources, effective sources, enqueued label) from "
                         "its results dir before the report, and rewrite --rows (rows of an older version of this "
                         "script)")
    args = ap.parse_args()

    from rtl.sweep.runner import run_sweep

    sides = (32, 40)
    workdir = Path(args.workdir)
    corpus, relations = family(workdir, args.family, sides, cap=300 if args.family == "demo" else 120,
                              seed=args.family_seed)
    targets = args.targets or sorted(relations)
    rows: list[dict[str, Any]] = []
    rows_file = Path(args.rows) if args.rows else None
    if rows_file and rows_file.exists():
        rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    done_runs = {(r["seed"], r["arm"], r.get("n_seeds", 1)) for r in rows}
    if args.rescan:
        for r in rows:
            rd = workdir / "ws" / f"b-{r['arm']}-s{r['seed']}{seeds_tag(r.get('n_seeds', 1))}"
            if (rd / "spec.json").exists():
                b = best_of(str(rd), r["target"])
                r.update(effective=b["effective"], enqueued=b["enqueued"], mask=b["mask"],
                         jaccard=jaccard(b["mask"], r["related"]),
                         jaccard_effective=jaccard(b["effective"] or b["mask"], r["related"]))
        if rows_file:  # the rows file holds what the report shows
            rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t_all, env = time.perf_counter(), run_env()
    for seed in args.seeds:
        for arm in args.arms:
            if args.report_only or (seed, arm, args.confirm_seeds) in done_runs:
                continue
            spec = make_spec(workdir, corpus, targets, arm, seed, args.trials, sides, args.confirm_seeds)
            if args.warm_from:
                from rtl.sweep.specialists import fraction_of

                src = workdir / "caches" / f"{args.warm_from}-s{seed}{seeds_tag(args.confirm_seeds)}"
                warm_cache(src if src.is_dir() else workdir / "caches" / f"{args.warm_from}-s{seed}",
                           Path(spec.cache_dir()),
                           experts=spec.search.sources.ranking.method == "experts", fraction=fraction_of(spec))
            t0 = time.perf_counter()
            try:
                run_sweep(spec)
            except Exception as e:  # an errored trial: keep what finished, say so
                print(f"{arm} seed {seed}: {e}", flush=True)
            secs = time.perf_counter() - t0
            images = images_consumed(spec.cache_dir())
            for target in targets:
                b = best_of(spec.results_dir, target)
                rel = relations[target].get("related", [])
                row = {"seed": seed, "target": target, "arm": arm, **b, "related": rel,
                       "jaccard": jaccard(b["mask"], rel), "images": images, "seconds": secs,
                       "jaccard_effective": jaccard(b["effective"] or b["mask"], rel), "env": env}
                if args.confirm_seeds > 1:
                    row.update(n_seeds=args.confirm_seeds, **verdict_of(spec, target))
                rk = Path(spec.results_dir) / "rankings" / f"{target}.json"
                if rk.exists():
                    r = json.loads(rk.read_text())
                    row.update(ranking_top=r["order"][:3], verdict=r["verdict"], suggested=r["suggested"])
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("related", "traj")}), flush=True)
                if rows_file:
                    with rows_file.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    report(rows)
    print(f"total {time.perf_counter() - t_all:.0f} s")


# rows of earlier code: reported, never run again (session 13's `from_specialist_lr: 0.3` -- the specialist
# continued at 0.3 of the lr without warm-up -- was measured worse and removed)
REPORT_ONLY = ("ranked_v1", "ranked_ii_tpe", "ranked_speconly_wl", "ranked_speconly_rwl",
               "ranked_speconly_ra")  # session 16: the label agreement without the target gate (`rag` has it)
ARMS = ("ranked", "random_bits", "tpe_asha_bits", "ranked_v1", "ranked_imp", "ranked_full", "ranked_lean",
        "ranked_cand", "ranked_cand_t", "ranked_ii", "ranked_ii_tpe", "ranked_top", "ranked_drop1", "ranked_drop12",
        "ranked_drop12q", "ranked_names", "ranked_names4", "ranked_spec", "ranked_spec3", "ranked_speconly",
        "ranked_speconly_h", "ranked_speconly_k2", "ranked_speconly_w", "ranked_speconly_r",
        "ranked_speconly_wl", "ranked_speconly_rwl", "ranked_speconly_r20", "ranked_speconly_ra",
        "ranked_speconly_rag", "ranked_speconly_ragp", "ranked_speconly_ragp2", "ranked_speconly_ragp20")


def report(rows: list[dict[str, Any]]) -> None:
    """Regret against the oracle = the lowest test error of ANY complete trial of any arm on that (seed,
    target): the best of every full-fidelity fine-tune run on the sample the arms explored (the exhaustive
    2^N oracle is out of reach); each arm is judged by the test error of its best-by-val trial."""
    from scipy.stats import wilcoxon

    by = {(r["seed"], r["target"], r["arm"]): r for r in rows}
    pairs = sorted({(r["seed"], r["target"]) for r in rows})
    for p in pairs:
        here = [by[p + (a,)] for a in ARMS if p + (a,) in by]
        oracle = min(r["best_test_any"] if r.get("best_test_any") is not None else r["test"] for r in here)
        for r in here:
            r["regret"] = r["test"] - oracle
            r["oracle"] = oracle
    print("\n| seed | target | arm | best val | its test | oracle test | regret | subset | 90 % of weighted images |"
          " related | Jaccard (subset / effective) | trials done/pruned | images |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["seed"], r["target"], r["arm"])):
        sub = ",".join(r["mask"]) or "(generalist/none)"
        if len(r["mask"]) > 6:
            sub = f"{len(r['mask'])} sources"
        print(f"| {r['seed']} | {r['target']} | {r['arm']} | {r['val']:.3f} | {r['test']:.3f} | {r['oracle']:.3f} | "
              f"{r['regret']:.3f} | {sub}{' (' + r['enqueued'] + ')' if r.get('enqueued') else ''} | "
              f"{','.join(r.get('effective') or []) or '-'} | {','.join(r['related']) or '-'} | "
              f"{r['jaccard']:.2f} / {r.get('jaccard_effective', r['jaccard']):.2f} | "
              f"{r['n_done']}/{r.get('n_pruned', '?')} | {r['images']} |")
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    print()
    for a in arms:
        rr = [r for r in rows if r["arm"] == a]
        imgs = {r["seed"]: r["images"] for r in rr}
        rel = [r["jaccard"] for r in rr if r["related"]]
        eff = [r.get("jaccard_effective", r["jaccard"]) for r in rr if r["related"]]
        print(f"{a}: n = {len(rr)}, median regret {statistics.median(r['regret'] for r in rr):.3f} (mean "
              f"{statistics.mean(r['regret'] for r in rr):.3f}), mean Jaccard on targets with related "
              f"{statistics.mean(rel) if rel else float('nan'):.2f}, share with Jaccard >= 0.8 "
              f"{sum(j >= 0.8 for j in rel)}/{len(rel)}; with the effective sources of weighted winners "
              f"{statistics.mean(eff) if eff else float('nan'):.2f}, {sum(j >= 0.8 for j in eff)}/{len(eff)}; "
              f"pretraining images per seed {statistics.mean(imgs.values()):.0f}")
    ref = "random_bits"  # every other arm against random search over bits, on the (seed, target) pairs both ran
    for arm in [a for a in arms if a != ref]:
        common = [p for p in pairs if p + (arm,) in by and p + (ref,) in by]
        if not common:
            continue
        seeds = sorted({p[0] for p in common})
        ri = statistics.mean(by[p + (arm,)]["images"] for p in common)
        oi = statistics.mean(by[p + (ref,)]["images"] for p in common)
        print(f"\n{arm} vs {ref} on {len(common)} (seed, target) pairs, seeds {seeds}:")
        print(f"  pretraining images {arm}/{ref}: {ri / oi:.2f}")
        d = [by[p + (arm,)]["regret"] - by[p + (ref,)]["regret"] for p in common]
        nz = [x for x in d if x != 0]
        if nz:
            print(f"  paired regret {arm} - {ref}: median {statistics.median(d):+.3f}, mean {statistics.mean(d):+.3f}, "
                  f"{arm} better/equal/worse {sum(x < 0 for x in d)}/{len(d) - len(nz)}/{sum(x > 0 for x in d)}, "
                  f"Wilcoxon signed-rank p = {wilcoxon(d).pvalue:.3f} (two-sided; zero differences dropped: "
                  f"{len(nz)} used)")
            if len(nz) >= 2:
                print(f"  one-sided (H1: {arm} regret > {ref}'s): p = {wilcoxon(d, alternative='greater').pvalue:.3f}")
        else:
            print(f"  paired regret {arm} - {ref}: all {len(d)} differences are 0")
        reach = []  # trials the arm needed to reach random search's best val (None: never)
        for p in common:
            goal = by[p + (ref,)]["val"]
            hit = [n for n, v in by[p + (arm,)].get("traj", []) if v <= goal]
            reach.append(min(hit) + 1 if hit else None)
        got = [x for x in reach if x is not None]
        print(f"  reached {ref}'s best val on {len(got)}/{len(reach)} pairs"
              + (f", median trials {statistics.median(got):.0f}" if got else ""))
    verdict_report(rows)
    # a ranking by specialists has no null verdict (the sweep's verdict is the null): only experts' rankings count
    rows = [r for r in rows if not str(r.get("verdict", "")).startswith("by specialists")]
    nulls = [r for r in rows if r["arm"].startswith("ranked") and not r["related"] and "verdict" in r]
    if nulls:
        ok = sum(r["verdict"].startswith("no source helps") for r in nulls)
        print(f"\ncorrect null (ranking verdict) on targets without a related source: {ok}/{len(nulls)}")
    withrel = [r for r in rows if r["arm"].startswith("ranked") and r["related"] and "verdict" in r]
    if withrel:
        fn = sum(r["verdict"].startswith("no source helps") for r in withrel)
        print(f"false null (ranking verdict says none on a target with a related source): {fn}/{len(withrel)}")


if __name__ == "__main__":
    main()
