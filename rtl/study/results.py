"""A finished (or partly finished) study as numbers: cells from MLflow, summaries, similarity, findings.

Every series a figure draws is computed here and written to `report/data.json`, so what a figure shows
can be read back and checked (tests do) without parsing images.

Conventions (stated in the report):
* errors are TEST errors (the val error only selects: per (target, row, size) the mode with the lowest
  mean val error is "the best mode" used by the bar and gain figures); a target without a test split
  falls back to val;
* mean ± sample std (ddof=1) over seeds, n shown; gains over scratch are paired by seed;
* similarity of a (target, strategy row), >= 0.5 = "similar": with a source ranking of the target
  (`rankings:` in the spec; rtl.select.rank), the share of the row's sources' importance mass that lies
  on sources the ranking's signed-gain verdict calls "helps"; otherwise the share of the row's pretraining
  classes that come from a source sharing a domain tag with the target, weighted by the importance mass
  (class_mass of a weights.json computed for that target by a `weighted` row: Ngiam et al. 2018, arXiv
  1811.07056) when the study has one, else by the classes' image counts.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

SIMILAR = 0.5


def ms(xs: list[float]) -> tuple[float, float, int]:
    a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(a):
        return math.nan, math.nan, 0
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def collect_cells(spec: Any, tracker: Any) -> list[dict[str, Any]]:
    """One dict per finished cell (MLflow run with `rtl.final`)."""
    from rtl.study.runner import cell_runs

    out = []
    for r in cell_runs(tracker):
        t = r.data.tags
        if "rtl.final" not in t:
            continue
        final = json.loads(t["rtl.final"])
        test = final.get("test_error")
        out.append({"id": t["rtl.cell"], "target": t["rtl.target"], "row": t["rtl.strategy"],
                    "size": float(t["rtl.size"]), "mode": t["rtl.mode"], "seed": int(t["rtl.seed"]),
                    "val": float(final["val_error"]), "test": float(test if test is not None else final["val_error"]),
                    "n_train": int(final.get("n_train", 0)), "init": t.get("rtl.init", ""),
                    "weights_path": t.get("rtl.weights_path")})
    return out


def _by(cells: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        out.setdefault(tuple(c[k] for k in keys), []).append(c)
    return out


def best_modes(cells: list[dict[str, Any]]) -> dict[tuple, str]:
    """(target, row, size) -> the mode with the lowest mean val error (selection on val only)."""
    best: dict[tuple, tuple[float, str]] = {}
    for (tg, row, size, mode), cs in _by(cells, "target", "row", "size", "mode").items():
        v = ms([c["val"] for c in cs])[0]
        if (tg, row, size) not in best or v < best[(tg, row, size)][0]:
            best[(tg, row, size)] = (v, mode)
    return {k: m for k, (_, m) in best.items()}


def per_seed(cells: list[dict[str, Any]], target: str, row: str, size: float, mode: str) -> dict[int, float]:
    return {c["seed"]: c["test"] for c in cells
            if (c["target"], c["row"], c["size"], c["mode"]) == (target, row, size, mode)}


def summarize(spec: Any, plan: dict[str, Any], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The data behind every figure and table (JSON-able; keys are strings)."""
    rows = [r for r in plan["rows"] if plan["rows"][r]["available"]]
    modes = [m.name for m in spec.modes]
    sizes = plan["sizes"]
    best = best_modes(cells)
    d: dict[str, Any] = {"rows": rows, "modes": modes, "sizes": sizes, "size_kind": plan["size_kind"],
                         "targets": spec.target_names(), "errors": {}, "gain": {}, "heatmap": {}, "best_mode": {},
                         "images_per_class": {}}
    for tg in spec.target_names():
        ncls = max(1, len(plan["targets"][tg]["classes"]))
        d["images_per_class"][tg] = {f"{s:g}": plan["targets"][tg]["n_train"][f"{s:g}"] / ncls for s in sizes}
        err, gain, heat, bm = {}, {}, {}, {}
        for row in rows:
            for s in sizes:
                mode = best.get((tg, row, s))
                if mode is None:
                    continue
                bm.setdefault(row, {})[f"{s:g}"] = mode
                err.setdefault(row, {})[f"{s:g}"] = list(ms(list(per_seed(cells, tg, row, s, mode).values())))
                if "scratch" in rows and row != "scratch" and (tg, "scratch", s) in best:
                    sc = per_seed(cells, tg, "scratch", s, best[(tg, "scratch", s)])
                    mine = per_seed(cells, tg, row, s, mode)
                    gain.setdefault(row, {})[f"{s:g}"] = list(ms([sc[k] - mine[k] for k in mine if k in sc]))
        for s in sizes:
            heat[f"{s:g}"] = {row: {m: ms([c["test"] for c in cells if (c["target"], c["row"], c["size"], c["mode"])
                                          == (tg, row, s, m)])[0] for m in modes} for row in rows}
        d["errors"][tg], d["gain"][tg], d["heatmap"][tg], d["best_mode"][tg] = err, gain, heat, bm
    d["similarity"], d["similarity_source"] = similarity(spec, plan, cells)
    d["quadrants"] = quadrants(spec, plan, cells, d["similarity"])
    return d


# ---- similarity + the probe / fine-tune 2 x 2 -----------------------------------------------------------
def similarity(spec: Any, plan: dict[str, Any], cells: list[dict[str, Any]]) -> tuple[dict, dict]:
    """{target: {row: share in [0, 1]}}, {target: "importance mass" | "image counts"}; see module doc."""
    from rtl.data.convention import load_dataset
    from rtl.train.strategies import open_view

    m = open_view(spec.corpus_path()).manifest
    counts = {int(k): float(v) for k, v in (m.get("counts_after") or {}).items()}
    if not counts:
        counts = {int(k): float(v) for k, v in open_view(spec.corpus_path()).class_counts().items()}
    cls = {int(c["id"]): c for c in m["classes"]}
    ds_dom = {n: set(v.get("domain", [])) for n, v in m["datasets"].items()}
    sims: dict[str, dict[str, float]] = {}
    source: dict[str, str] = {}
    for tg, path in zip(spec.target_names(), spec.target_paths()):
        ranked = _ranking_similarity(spec, tg, m, plan)
        if ranked is not None:
            sims[tg], source[tg] = ranked, "ranking signals"
            continue
        tdom = set(load_dataset(path).domain)
        mass = dict(counts)
        source[tg] = "image counts"
        wp = next((c["weights_path"] for c in cells if c["target"] == tg and c.get("weights_path")
                   and os.path.isfile(c["weights_path"])), None)
        if wp:
            try:
                doc = json.loads(open(wp).read())
                mass = {int(c["id"]): float(c.get("class_mass", c.get("weight", 0.0))) for c in doc["classes"]}
                source[tg] = "importance mass"
            except (OSError, ValueError, KeyError):
                pass
        sims[tg] = {}
        for row, info in plan["rows"].items():
            mask = info["masks"].get(tg)
            if mask is None or not info["available"]:
                continue
            inview = [k for k in cls if cls[k]["dataset"] in mask]
            tot = sum(mass.get(k, 0.0) for k in inview)
            rel = sum(mass.get(k, 0.0) for k in inview if ds_dom.get(cls[k]["dataset"], set()) & tdom)
            sims[tg][row] = rel / tot if tot > 0 else 0.0
    return sims, source


def _ranking_similarity(spec: Any, tg: str, manifest: dict[str, Any], plan: dict[str, Any]) -> dict | None:
    """{row: helping share of the row's importance mass} from the target's ranking, or None when absent
    or computed on another corpus version."""
    from rtl.artifacts.ranking import read_ranking

    path = spec.ranking_path(tg)
    if path is None or not os.path.isfile(path):
        return None
    r = read_ranking(path)
    if r["corpus_version"] != manifest.get("version"):
        print(f"rtl: note: {path}: ranking of another corpus version; similarity from the corpus instead")
        return None
    if r.get("method") == "specialists":  # a sweep's ranking by specialists: no importance mass, no verdicts
        print(f"rtl: note: {path}: a ranking by specialists has no per-source verdicts; similarity from the corpus "
              "instead")
        return None
    dom = {n: set(v.get("domain", [])) for n, v in manifest["datasets"].items()}
    units = {x["unit"]: x for x in r["rows"]}
    out = {}
    for row, info in plan["rows"].items():
        mask = info["masks"].get(tg)
        if mask is None or not info["available"]:
            continue
        mine = [u for u in units if (u in mask if r.get("by", "datasets") == "datasets"
                                     else any(u in dom.get(d, set()) for d in mask))]
        tot = sum(float(units[u].get("importance") or 0.0) for u in mine)
        helps = sum(float(units[u].get("importance") or 0.0) for u in mine if units[u].get("verdict") == "helps")
        out[row] = helps / tot if tot > 0 else 0.0
    return out


def quadrants(spec: Any, plan: dict[str, Any], cells: list[dict[str, Any]], sims: dict) -> dict[str, Any]:
    """Probe vs fine-tune in the 2 x 2 (small / large target) x (similar / different source).

    Per (target, pretrained row, size): the probe's mean test error minus the best fine-tune mode's (by
    val); positive = fine-tuning wins. Small = sizes up to the median of the study's sizes."""
    probes = {m.name for m in spec.modes if m.probe}
    fts = {m.name for m in spec.modes if not m.probe}
    out: dict[str, Any] = {}
    if not probes or not fts:
        return {"_note": "needs at least one probe mode and one fine-tune mode"}
    sizes = plan["sizes"]
    cut = float(np.median(sizes))
    by = _by(cells, "target", "row", "size", "mode")
    for tg, rows in sims.items():
        for row, sim in rows.items():
            for s in sizes:
                p, f = _best_of(by, (tg, row, s), probes), _best_of(by, (tg, row, s), fts)
                if p is None or f is None:
                    continue
                q = ("small" if s <= cut else "large") + "|" + ("similar" if sim >= SIMILAR else "different")
                out.setdefault(q, {"diffs": [], "points": []})
                out[q]["diffs"].append(p - f)
                out[q]["points"].append(f"{tg}/{row}/{s:g}")
    for v in out.values():
        mean, std, n = ms(v["diffs"])
        v.update(mean=mean, std=std, n=n, winner="fine-tune" if mean > 0 else ("probe" if mean < 0 else "tie"),
                 margin=abs(mean))
    return out


def _best_of(by: dict[tuple, list[dict[str, Any]]], key: tuple, group: set[str]) -> float | None:
    """Mean test error of the mode of `group` with the lowest mean val error at `key` (target, row, size)."""
    cand = [(ms([c["val"] for c in by[(*key, md)]])[0], md) for md in sorted(group) if (*key, md) in by]
    if not cand:
        return None
    return ms([c["test"] for c in by[(*key, min(cand)[1])]])[0]


# ---- findings -------------------------------------------------------------------------------------------
def _verdict(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "not measured"
    if mean > 0 and (n > 1 and mean - std > 0):
        return "holds"
    if mean > 0:
        return "holds on average, within seed noise"
    return "does not hold"


def _fmt(m: float, s: float, n: int) -> str:
    return f"{m:+.3f} ± {s:.3f} (n={n})"


def findings(d: dict[str, Any], plan: dict[str, Any]) -> list[dict[str, str]]:
    """The study's qualitative findings, each with its numbers and whether it holds on this study."""
    out = []
    rows = plan["rows"]
    sims = d["similarity"]
    sizes = [f"{s:g}" for s in d["sizes"]]

    def related(tg: str, row: str) -> bool:
        return sims.get(tg, {}).get(row, 0.0) >= SIMILAR

    g = [v for tg in d["targets"] for row, by in d["gain"][tg].items() if related(tg, row) for v in
         [by[s][0] for s in sizes if s in by and by[s][2]]]
    out.append({"finding": "pretraining on related sources beats scratch (gain = scratch error - row error, "
                           "per target x related row x size)", **_stat(g)})
    shrink = [by[sizes[0]][0] - by[sizes[-1]][0] for tg in d["targets"] for row, by in d["gain"][tg].items()
              if related(tg, row) and sizes[0] in by and sizes[-1] in by and len(sizes) > 1]
    out.append({"finding": f"the gain shrinks as the target grows (gain at {sizes[0]} minus gain at {sizes[-1]})",
                 **_stat(shrink)})
    full = [r for r, v in rows.items() if v["strategy"] == "source" and v["full"] and v["available"]]
    subs = [r for r, v in rows.items() if v["strategy"] in ("subset", "source") and not v["full"]]
    diff = [d["errors"][tg][f][s][0] - d["errors"][tg][r][s][0] for tg in d["targets"] for f in full
            for r in subs if related(tg, r) for s in sizes if s in d["errors"][tg].get(f, {})
            and s in d["errors"][tg].get(r, {})]
    st = _stat(diff)
    if st["n"] and st["verdict"] != "holds":  # "at least as good": within noise also counts
        st["verdict"] = "holds (at least as good)" if st["mean"] >= -st["std"] else "does not hold"
    out.append({"finding": "a domain subset of related sources is at least as good as the full corpus "
                           "(full-corpus error - subset error)", **st})
    wts = [r for r, v in rows.items() if v["strategy"] == "weighted" and v["available"]]
    iw = [d["errors"][tg][f][s][0] - d["errors"][tg][w][s][0] for tg in d["targets"] for f in full for w in wts
          if rows[w]["masks"][tg] == rows[f]["masks"][tg] for s in sizes if s in d["errors"][tg].get(f, {})
          and s in d["errors"][tg].get(w, {})]
    out.append({"finding": "importance-weighted sampling beats uniform sampling of the same sources "
                           "(uniform error - weighted error)", **_stat(iw)})
    q = d["quadrants"]
    if "_note" in q:
        out.append({"finding": "probe vs fine-tune by scenario", "verdict": "not measured", "detail": q["_note"],
                    "mean": math.nan, "std": math.nan, "n": 0})
    else:
        det = "; ".join(f"{k.replace('|', ' target, ')} source: {v['winner']} by {v['margin']:.3f} ± {v['std']:.3f} (n={v['n']})"
                        for k, v in sorted(q.items()))
        rule = {"small|similar": "probe", "large|similar": "fine-tune", "large|different": "fine-tune"}
        ok = [q[k]["winner"] == w for k, w in rule.items() if k in q]
        out.append({"finding": "rules of thumb: small+similar -> probe; large -> fine-tune", "detail": det,
                    "verdict": ("holds" if all(ok) else f"holds in {sum(ok)} of {len(ok)} quadrants") if ok
                    else "not measured", "mean": math.nan, "std": math.nan, "n": sum(v["n"] for v in q.values())})
    return out


def _stat(xs: list[float]) -> dict[str, Any]:
    m, s, n = ms(xs)
    return {"mean": m, "std": s, "n": n, "verdict": _verdict(m, s, n), "detail": _fmt(m, s, n) if n else "-"}
