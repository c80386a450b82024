"""`rtl study report RESULTS`: the study's figures (PNG) and one self-contained HTML report.

Figures (matplotlib Agg), each drawn only from `report/data.json` (rtl.study.results):
* `errors_<target>.png`: test error by strategy row, one bar per train size (best mode by val), mean ±
  std over seeds;
* `gain_<target>.png`: gain over scratch vs images per class (log x), one line per strategy row — the
  "gain shrinks as the target grows" figure (Kornblith et al. 2019, arXiv 1805.08974; He et al. 2019,
  arXiv 1811.08883);
* `heatmap_<target>.png`: strategy row x mode mean test error, one panel per train size;
* `probe_vs_finetune.png`: the 2 x 2 (small / large target) x (similar / different source), with the
  mode family that won in each quadrant and by how much (Yosinski et al. 2014, arXiv 1411.1792);
* `corpus.png`: images per class before / after the cap and image sizes before / after resizing.
Plus Kendall tau between transferability scores (LogME, LEEP, NCE, H-score) of each pretrained row's
checkpoint on the target's train split and the row's fine-tuned accuracy, per target (`transferability`).
`report.html` inlines every PNG (base64) and the tables; everything is also logged to MLflow (the study
parent run, artifact folder `report/`).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from rtl.artifacts.layout import report_dir
from rtl.study.results import collect_cells, findings, ms, summarize


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path.name


def fig_errors(d: dict[str, Any], tg: str, out: Path) -> str | None:
    err = d["errors"][tg]
    if not err:
        return None
    plt = _plt()
    rows, sizes = [r for r in d["rows"] if r in err], [f"{s:g}" for s in d["sizes"]]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.4))
    w = 0.8 / len(sizes)
    for j, s in enumerate(sizes):
        m = [err[r].get(s, [math.nan] * 3)[0] for r in rows]
        e = [err[r].get(s, [math.nan] * 3)[1] for r in rows]
        ax.bar(np.arange(len(rows)) + (j - (len(sizes) - 1) / 2) * w, m, w, yerr=e, capsize=2,
               label=f"{s}{'/class' if d['size_kind'] == 'per_class' else ''}")
    ax.set_xticks(range(len(rows)), rows, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="test error (best mode, mean ± std)", title=f"{tg}: error by strategy and train size")
    ax.legend(title="train size", fontsize=7)
    return _save(fig, out / f"errors_{tg}.png")


def fig_gain(d: dict[str, Any], tg: str, out: Path) -> str | None:
    gain = d["gain"][tg]
    if not gain:
        return None
    plt = _plt()
    ipc = d["images_per_class"][tg]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for row, by in gain.items():
        ks = [k for k in ipc if k in by]
        x = [ipc[k] for k in ks]
        ax.errorbar(x, [by[k][0] for k in ks], yerr=[by[k][1] for k in ks], marker="o", capsize=3, label=row)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ticks = sorted(set(ipc.values()))
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="target train images per class (log)", ylabel="gain over scratch (error)",
           title=f"{tg}: gain of pretraining vs target size")
    ax.legend(fontsize=7)
    return _save(fig, out / f"gain_{tg}.png")


def fig_heatmap(d: dict[str, Any], tg: str, out: Path) -> str | None:
    heat = d["heatmap"][tg]
    plt = _plt()
    rows, modes, sizes = d["rows"], d["modes"], [f"{s:g}" for s in d["sizes"]]
    fig, axes = plt.subplots(1, len(sizes), figsize=(1.5 + 1.2 * len(modes) * len(sizes), 1 + 0.45 * len(rows)),
                             squeeze=False)
    vals = [heat[s][r][m] for s in sizes for r in rows for m in modes if not math.isnan(heat[s][r][m])]
    if not vals:
        plt.close(fig)
        return None
    for ax, s in zip(axes[0], sizes):
        a = np.array([[heat[s][r][m] for m in modes] for r in rows], dtype=float)
        im = ax.imshow(a, cmap="viridis_r", vmin=min(vals), vmax=max(vals), aspect="auto")
        for i in range(len(rows)):
            for j in range(len(modes)):
                if not math.isnan(a[i, j]):
                    ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(len(modes)), modes, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows if ax is axes[0][0] else [""] * len(rows), fontsize=7)
        ax.set_title(f"size {s}", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="test error")
    fig.suptitle(f"{tg}: strategy x mode", fontsize=9)
    fig.savefig(out / f"heatmap_{tg}.png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"heatmap_{tg}.png"


def fig_quadrants(d: dict[str, Any], out: Path) -> str | None:
    q = d["quadrants"]
    if "_note" in q or not q:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    grid = np.full((2, 2), np.nan)
    for i, sim in enumerate(("similar", "different")):
        for j, size in enumerate(("small", "large")):
            v = q.get(f"{size}|{sim}")
            if v:
                grid[i, j] = v["mean"]
                ax.text(j, i, f"{v['winner']}\nby {v['margin']:.3f} ± {v['std']:.3f}\n(n={v['n']})", ha="center",
                        va="center", fontsize=9, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
            else:
                ax.text(j, i, "no cells", ha="center", va="center", fontsize=9, color="grey")
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    # positive = probe error - fine-tune error > 0 = fine-tuning better: red; probe better: blue
    ax.imshow(grid, cmap="coolwarm", vmin=-(lim or 1.0), vmax=lim or 1.0)
    ax.set_xticks([0, 1], ["small target", "large target"])
    ax.set_yticks([0, 1], ["similar source", "different source"])
    ax.set_title("which wins: linear probe (blue) or fine-tuning (red)\nmargin = test error difference, mean ± std",
                 fontsize=9)
    return _save(fig, out / "probe_vs_finetune.png")


def fig_corpus(manifest: dict[str, Any], out: Path) -> str | None:
    cb, ca = manifest.get("counts_before") or {}, manifest.get("counts_after") or {}
    hb, ha = manifest.get("size_hist_before") or {}, manifest.get("size_hist_after") or {}
    if not (cb or ca or hb or ha):
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ids = sorted(set(cb) | set(ca), key=lambda k: -int(cb.get(k, ca.get(k, 0))))
    a1.bar(range(len(ids)), [cb.get(k, 0) for k in ids], color="lightgrey", label="before cap")
    a1.bar(range(len(ids)), [ca.get(k, 0) for k in ids], color="C0", alpha=0.8, label="after cap")
    a1.set(yscale="log", xlabel="corpus class (sorted by size)", ylabel="images", title="images per class")
    a1.legend(fontsize=7)
    keys = list(dict.fromkeys([*hb, *ha]))
    x = np.arange(len(keys))
    a2.bar(x - 0.2, [hb.get(k, 0) for k in keys], 0.4, label="before (original)")
    a2.bar(x + 0.2, [ha.get(k, 0) for k in keys], 0.4, label="after resizing")
    a2.set_xticks(x, keys, rotation=30, ha="right", fontsize=7)
    a2.set(ylabel="images", title="image size (longest side, px)")
    a2.legend(fontsize=7)
    return _save(fig, out / "corpus.png")


# ---- transferability ------------------------------------------------------------------------------------
def transferability(spec: Any, cells: list[dict[str, Any]], d: dict[str, Any]) -> dict[str, Any]:
    """Per target: scores of each pretrained row's checkpoint and Kendall tau(score, fine-tuned accuracy)
    across rows (accuracy = 1 - mean test error at the largest size, best mode). Positive tau = the score
    ranks the strategies like fine-tuning does."""
    from scipy.stats import kendalltau

    from rtl.select.inference import infer_checkpoint
    from rtl.select.transferability import h_score, leep, logme, nce

    largest = f"{max(d['sizes']):g}"
    out: dict[str, Any] = {}
    for tg, path in zip(spec.target_names(), spec.target_paths()):
        ckpts = {c["row"]: c["init"] for c in cells if c["target"] == tg and c["init"] and os.path.isdir(c["init"])}
        scores: dict[str, dict[str, float]] = {}
        for row, ck in sorted(ckpts.items()):
            if largest not in d["errors"][tg].get(row, {}):
                continue
            inf, _meta, _ = infer_checkpoint(ck, path, split="train", num_threads=1)
            y = inf.labels
            scores[row] = {"LogME": logme(inf.features, y), "LEEP": leep(inf.probs(), y),
                           "NCE": nce(inf.logits.argmax(1), y), "H-score": h_score(inf.features, y),
                           "accuracy": 1.0 - d["errors"][tg][row][largest][0]}
        taus = {}
        for name in ("LogME", "LEEP", "NCE", "H-score"):
            if len(scores) >= 2:
                t = kendalltau([s[name] for s in scores.values()], [s["accuracy"] for s in scores.values()])[0]
                taus[name] = None if t is None or (isinstance(t, float) and math.isnan(t)) else float(t)
        out[tg] = {"scores": scores, "tau": taus, "n": len(scores)}
    return out


CAPTIONS = {
    "errors": "Test error per strategy row, one bar per target train size (lower is better); each bar uses the "
              "mode with the lowest val error; error bars: std over seeds.",
    "gain": "Gain over scratch (scratch error - row error, paired by seed) vs images per class: above 0 the "
            "pretraining helps; a falling line = the gain shrinks as the target grows.",
    "heatmap": "Mean test error for every strategy row x fine-tune mode, one panel per train size.",
    "quadrants": "Linear probe vs fine-tuning (best fine-tune mode by val) per scenario: small/large = train sizes "
                 "up to / above the study's median; similar = similarity >= 0.5 (table below).",
}


# ---- HTML -----------------------------------------------------------------------------------------------
def _img(out: Path, name: str | None) -> str:
    if not name:
        return ""
    b64 = base64.b64encode((out / name).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}"></figure>'


def _table(head: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{b}</table>"


def _f(v: list[float] | None) -> str:
    if not v or not v[2]:
        return "-"
    return f"{v[0]:.3f} ± {v[1]:.3f} (n={v[2]})" if v[2] > 1 else f"{v[0]:.3f} (n=1)"


def write_html(out: Path, spec: Any, plan: dict[str, Any], d: dict[str, Any], figs: dict[str, Any],
               cells: list[dict[str, Any]]) -> Path:
    p = [f"<!doctype html><html><head><meta charset='utf-8'><title>rtl study {html.escape(spec.name)}</title>",
         "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
         "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>",
         f"<h1>Study {html.escape(spec.name)}</h1>",
         f"<p>{len(cells)} of {len(plan['cells'])} cells finished: {len(d['targets'])} target(s) x {len(d['rows'])} "
         f"strategy row(s) x {len(d['sizes'])} train size(s) ({d['size_kind']}) x {len(d['modes'])} mode(s) x "
         f"{len(spec.seeds)} seed(s); backbone {html.escape(spec.backbone)}, {spec.budget.finetune_epochs} "
         "fine-tune epochs. Errors are test errors, mean ± sample std over seeds; the mode of each bar/line is "
         "chosen on val.</p>"]
    if plan["skipped"]:
        p.append("<h2>Unavailable rows</h2>" + _table(["row", "reason"], [[s["row"], s["reason"]]
                                                                         for s in plan["skipped"]]))
    notes = [[tg, s, ", ".join(f"{c}: {n}" for c, n in cap.items())]
             for tg, v in plan["targets"].items() for s, cap in v["capped"].items()]
    if notes:
        p.append("<h2>Sizes larger than a class</h2><p>Those classes use all their images.</p>"
                 + _table(["target", "size", "class: images available"], notes))
    p.append("<h2>Findings</h2>" + _table(["finding", "verdict", "numbers"], [[f["finding"], f["verdict"], f["detail"]]
                                                                             for f in figs["findings"]]))
    if figs.get("quadrants"):
        p.append(f"<p><i>{CAPTIONS['quadrants']}</i></p>" + _img(out, figs["quadrants"]))
    p.append("<p>Similarity of a (target, row): with a source ranking of the target, the share of the row's "
             "importance mass on sources whose verdict is 'helps'; otherwise the share of the row's pretraining "
             "classes from sources sharing a domain tag with the target, weighted by importance mass or image "
             f"counts. Used per target: {', '.join(f'{t}: {s}' for t, s in d['similarity_source'].items())}.</p>")
    p.append(_table(["target"] + sorted({r for v in d["similarity"].values() for r in v}),
                    [[t] + [f"{v.get(r, math.nan):.2f}" for r in sorted({r for v in d["similarity"].values() for r in v})]
                     for t, v in d["similarity"].items()]))
    for tg in d["targets"]:
        p.append(f"<h2>Target {html.escape(tg)}</h2>")
        for key in ("errors", "gain", "heatmap"):
            if figs[key].get(tg):
                p.append(f"<p><i>{CAPTIONS[key]}</i></p>" + _img(out, figs[key][tg]))
        sizes = [f"{s:g}" for s in d["sizes"]]
        p.append(_table(["row"] + [f"size {s}" for s in sizes],
                        [[r] + [f"{_f(d['errors'][tg].get(r, {}).get(s))} [{d['best_mode'][tg].get(r, {}).get(s, '-')}]"
                                for s in sizes] for r in d["rows"]]))
        tr = figs["transferability"].get(tg)
        if tr and tr["scores"]:
            names = ["LogME", "LEEP", "NCE", "H-score"]
            p.append(f"<h3>Transferability scores vs fine-tuned accuracy (largest size, n={tr['n']} rows)</h3>")
            p.append(_table(["row"] + names + ["accuracy"], [[r] + [f"{s[k]:.3f}" for k in names + ["accuracy"]]
                                                             for r, s in tr["scores"].items()]))
            p.append(_table(["score", "Kendall tau"], [[k, "-" if tr["tau"].get(k) is None else f"{tr['tau'][k]:+.2f}"]
                                                       for k in names]))
    p.append("<h2>Corpus</h2>" + _img(out, figs.get("corpus")))
    by_cell = sorted(cells, key=lambda c: c["id"])
    p.append("<h2>All cells</h2>" + _table(["cell", "n_train", "val", "test"],
                                           [[c["id"], c["n_train"], f"{c['val']:.3f}", f"{c['test']:.3f}"]
                                            for c in by_cell]))
    p.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(p))
    return path


def write_report(results_dir: str, *, log_mlflow: bool = True, scores: bool = True) -> str:
    """Figures + data.json + report.html under `<results>/report/`; returns the HTML path."""
    from rtl.study.runner import load_plan, study_run, study_tracker
    from rtl.study.spec import load_resolved
    from rtl.train.strategies import open_view

    spec, plan = load_resolved(results_dir), load_plan(results_dir)
    tracker = study_tracker(spec)
    cells = collect_cells(spec, tracker)
    out = Path(report_dir(results_dir))
    out.mkdir(parents=True, exist_ok=True)
    d = summarize(spec, plan, cells)
    figs: dict[str, Any] = {"errors": {}, "gain": {}, "heatmap": {}}
    for tg in d["targets"]:
        figs["errors"][tg] = fig_errors(d, tg, out)
        figs["gain"][tg] = fig_gain(d, tg, out)
        figs["heatmap"][tg] = fig_heatmap(d, tg, out)
    figs["quadrants"] = fig_quadrants(d, out)
    figs["corpus"] = fig_corpus(open_view(spec.corpus_path()).manifest, out)
    figs["transferability"] = transferability(spec, cells, d) if scores and cells else {}
    figs["findings"] = findings(d, plan)
    (out / "data.json").write_text(json.dumps({**d, "findings": figs["findings"],
                                               "transferability": figs["transferability"],
                                               "figures": {k: v for k, v in figs.items()
                                                           if k in ("errors", "gain", "heatmap", "quadrants", "corpus")}},
                                              indent=1, default=float))
    page = write_html(out, spec, plan, d, figs, cells)
    if log_mlflow:
        run = study_run(tracker)
        for f in sorted(out.iterdir()):
            tracker.log_artifact(run, str(f), "report")
        tracker.log_metrics(run, {"cells_finished": len(cells), "cells_total": len(plan["cells"])})
    return str(page)


__all__ = ["write_report", "transferability", "ms"]
