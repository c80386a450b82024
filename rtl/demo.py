"""`rtl demo`: the main job end to end on the embedded synthetic data (what `make demo` runs).

synth -> corpus build -> sweep (sweeps/demo.yaml) -> report. Each step is skipped when its output is
already in the workspace, so a second `make demo` (or one after Ctrl-C) continues instead of redoing.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from rtl.artifacts.manifest import MANIFEST_FILE
from rtl.cliargs import nonneg_int, seed
from rtl.errors import RtlError

# A source checkout runs its own sweeps/demo.yaml (the copy users edit); an installed wheel has no sweeps/
# folder and runs the copy shipped as package data (rtl/resources/demo.yaml, kept identical by a test).
_CHECKOUT_SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "demo.yaml"
PACKAGED_SPEC = Path(__file__).resolve().parent / "resources" / "demo.yaml"
DEFAULT_SPEC = _CHECKOUT_SPEC if _CHECKOUT_SPEC.is_file() else PACKAGED_SPEC


def run_demo(workspace: str | Path, *, spec_path: str | Path = DEFAULT_SPEC, size: str = "demo",
             seed: int = 0, cap: int = 300, address: str | None = None) -> str:
    """Run the demo pipeline in `workspace`; returns the sweep's results dir."""
    from rtl.data.corpus import build_corpus
    from rtl.data.synth import generate_family
    from rtl.report.sweep import write_report
    from rtl.sweep.runner import run_sweep
    from rtl.sweep.spec import load_spec

    t0 = time.perf_counter()
    ws = Path(workspace).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    if not Path(spec_path).is_file():
        raise RtlError(f"{spec_path}: demo sweep spec not found (pass --spec)")
    spec = load_spec(spec_path, {"workspace": str(ws)})

    data = ws / "data"
    if not (data / "relations.json").is_file():
        print(f"[1/4] synth: generating the demo family ({size}) in {data}", flush=True)
        generate_family(data, size=size, seed=seed)
    else:
        print(f"[1/4] synth: reusing {data}", flush=True)

    corpus = Path(spec.corpus_path())
    if not (corpus / MANIFEST_FILE).is_file():
        sources = sorted(p for p in (data / "sources").iterdir() if p.is_dir())
        print(f"[2/4] corpus: {len(sources)} sources -> {corpus} "
              f"(sides {spec.image.min_side}-{spec.image.max_side}, cap {cap})", flush=True)
        # CPU demo sides are tiny: patch only beyond a 16x shrink and never by box size, so defect and
        # OK images keep one geometry, like the (whole-shrunk) targets; docs/measurements/selection.md.
        m = build_corpus(sources, corpus, min_side=spec.image.min_side, max_side=spec.image.max_side,
                         cap=cap, seed=seed, address=address, max_downscale=16.0, min_defect_px=0.0)
        print(f"      {m['n_images_in']} images in, {m['n_rows_out']} rows out, {len(m['rejects'])} rejects, "
              f"{len(m['classes'])} classes, version {m['version']}", flush=True)
    else:
        print(f"[2/4] corpus: reusing {corpus}", flush=True)

    print(f"[3/4] sweep: {spec.name} over {len(spec.targets)} targets", flush=True)
    results = run_sweep(spec, address=address)
    print("[4/4] report", flush=True)
    report = write_report(results)
    minutes = (time.perf_counter() - t0) / 60
    print(f"\ndemo done in {minutes:.1f} min\n  report:  {report}\n  results: {results}\n"
          f"  MLflow:  rtl ui --workspace {results}   (then open http://127.0.0.1:5000)", flush=True)
    return results


def _demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    run_demo(args.workspace, spec_path=args.spec, size=args.size, seed=args.seed, cap=args.cap,
             address=args.address)
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="see it work: synthetic data -> corpus -> sweep -> report", description=__doc__)
    p.add_argument("--workspace", default="demo-workspace", help="folder for the data, corpus, runs and report")
    p.add_argument("--spec", default=str(DEFAULT_SPEC), help="sweep spec to run")
    p.add_argument("--size", default="demo", choices=["tiny", "demo", "full"], help="synthetic family size")
    p.add_argument("--seed", type=seed, default=0, help="seed of the data and the corpus undersampling")
    p.add_argument("--cap", type=nonneg_int, default=300, help="images kept per class in the corpus")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=_demo)
