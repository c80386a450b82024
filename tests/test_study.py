"""`rtl study`: spec validation, the plan, result summaries, and a tiny study end to end with resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from sweep_helpers import write_corpus, write_target

from rtl.errors import ConfigError, RtlError
from rtl.study.spec import load_study_spec

BASE = {"name": "t", "workspace": ".", "corpus": "corpus", "targets": ["targets/tgt"],
        "image": {"min_side": 32, "max_side": 40}, "strategies": ["scratch", "source"],
        "train_sizes": {"per_class": [1, 5]}, "modes": [{"name": "ft", "lr": 0.05}], "seeds": [0],
        "budget": {"pretrain_epochs": 1, "finetune_epochs": 1, "batch_size": 8, "max_concurrent": 2}}


def _spec_file(tmp_path: Path, **over) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump({**BASE, **over}))
    return p


@pytest.mark.parametrize("over,field,words", [
    ({"strategies": ["scratch", "magic"]}, "strategies.1.name", "unknown strategy 'magic'"),
    ({"strategies": ["joint"]}, "strategies.0.name", "not supported"),
    ({"strategies": [{"name": "subset"}]}, "strategies.0", "needs datasets, domains or target_domain"),
    ({"strategies": [{"name": "source", "temperature": 2}]}, "strategies.0", "only applies to strategy 'weighted'"),
    ({"strategies": [{"name": "scratch", "domains": ["pcb"]}]}, "strategies.0", "does not pretrain"),
    ({"strategies": ["source", {"name": "source"}]}, "(top level)", "two rows named 'source'"),
    ({"train_sizes": {"per_class": [1], "fraction": [0.5]}}, "train_sizes", "exactly one of"),
    ({"train_sizes": {"fraction": [0.5, 1.5]}}, "train_sizes", "(0, 1]"),
    ({"train_sizes": {"per_class": [0, 2]}}, "train_sizes", ">= 1"),
    ({"modes": []}, "modes", "at least 1"),
    ({"modes": [{"name": "p", "probe": True, "freeze_depth": 1}]}, "modes.0", "freeze_depth does not apply"),
    ({"seeds": [0, 0]}, "seeds", "distinct"),
    ({"targets": ["a/tgt", "b/tgt"]}, "targets", "share the folder name"),
    ({"bogus": 1}, "bogus", "unknown field"),
])
def test_spec_errors_are_one_line_and_name_the_field(tmp_path, over, field, words):
    p = _spec_file(tmp_path, **over)
    with pytest.raises(ConfigError) as e:
        load_study_spec(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: {field}:") and words in msg, msg


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "study.yaml"
    p.write_text("name: t\nstrategies: [scratch\n")
    with pytest.raises(ConfigError, match=rf"{p}:\d+"):
        load_study_spec(p)


def _workspace(tmp_path: Path, **over) -> Path:
    if not (tmp_path / "corpus").exists():
        write_corpus(tmp_path / "corpus")
        write_target(tmp_path / "targets" / "tgt", "tgt", per_split=(4, 2, 2))
    return _spec_file(tmp_path, **over)


def test_plan_lists_skips_caps_and_refuses_bad_input(tmp_path):
    from rtl.study.runner import _check_inputs, plan_study

    spec = load_study_spec(_workspace(tmp_path, strategies=["scratch", "imagenet",
                                                            {"name": "subset", "target_domain": "same"}]))
    plan = plan_study(spec)
    assert [s["row"] for s in plan["skipped"]] == ["imagenet"] and "imagenet" in plan["skipped"][0]["reason"]
    assert plan["rows"]["subset_same_domain"]["masks"] == {"tgt": ["a"]}  # target 'pcb' -> dataset a only
    assert plan["targets"]["tgt"]["capped"] == {"5": {"bad": 4, "ok": 4}}  # 5/class asked, 4 there: all used
    assert plan["targets"]["tgt"]["n_train"] == {"1": 2, "5": 8}
    assert len(plan["cells"]) == 2 * 2 and len({c["id"] for c in plan["cells"]}) == 4
    with pytest.raises(ConfigError, match="grid is empty"):
        plan_study(load_study_spec(_workspace(tmp_path, strategies=["imagenet"])))
    with pytest.raises(ConfigError, match=r"strategies\.0\.domains: 'film' not a corpus domain"):
        plan_study(load_study_spec(_workspace(tmp_path, strategies=[{"name": "subset", "domains": ["film"]}])))
    with pytest.raises(RtlError, match="targets: nope: no dataset"):
        _check_inputs(load_study_spec(_workspace(tmp_path, targets=["targets/nope"])))


def test_similarity_from_ranking_when_present_else_domain_share(tmp_path):
    from rtl.artifacts.ranking import write_ranking
    from rtl.study.results import similarity
    from rtl.study.runner import plan_study

    spec = load_study_spec(_workspace(tmp_path, strategies=["scratch", "source", {"name": "subset", "datasets": ["b"]}],
                                      rankings="rankings"))
    plan = plan_study(spec)
    sims, how = similarity(spec, plan, [])
    # no ranking: share of source classes from the target's domain (pcb = dataset a: 2 of 4 equal classes)
    assert how == {"tgt": "image counts"} and sims["tgt"] == {"source": 0.5, "subset_b": 0.0}
    rows = [{"unit": "a", "importance": 0.2, "verdict": "neutral"}, {"unit": "b", "importance": 0.6, "verdict": "helps"}]
    write_ranking(tmp_path / "rankings" / "tgt.json", {"version": 1, "target": "tgt", "corpus_version": "sweeptest0000001",
                                                         "order": ["b", "a"], "rows": rows, "suggested": ["b"], "by": "datasets"})
    sims, how = similarity(spec, plan, [])
    assert how == {"tgt": "ranking signals"} and sims["tgt"] == pytest.approx({"source": 0.75, "subset_b": 1.0})


def _cell(row, size, mode, seed, val, test, target="t"):
    return {"target": target, "row": row, "size": size, "mode": mode, "seed": seed, "val": val, "test": test}


def test_best_mode_by_val_gain_paired_by_seed_and_quadrants():
    from types import SimpleNamespace

    from rtl.study.results import best_modes, quadrants

    cells = []
    for seed, (sc, src) in enumerate([(0.6, 0.2), (0.5, 0.3)]):
        cells += [_cell("scratch", 2.0, "ft", seed, sc, sc), _cell("source", 2.0, "ft", seed, 0.9, src + 0.3),
                  _cell("source", 2.0, "probe", seed, 0.1, src), _cell("scratch", 2.0, "probe", seed, 0.9, 0.9)]
        cells += [_cell("source", 9.0, "ft", seed, 0.1, 0.1), _cell("source", 9.0, "probe", seed, 0.2, 0.3)]
    best = best_modes(cells)
    assert best[("t", "source", 2.0)] == "probe" and best[("t", "scratch", 2.0)] == "ft"
    spec = SimpleNamespace(modes=[SimpleNamespace(name="ft", probe=False), SimpleNamespace(name="probe", probe=True)])
    q = quadrants(spec, {"sizes": [2.0, 9.0]}, cells, {"t": {"source": 0.8}})
    assert q["small|similar"]["winner"] == "probe" and q["small|similar"]["margin"] == pytest.approx(0.3)
    assert q["large|similar"]["winner"] == "fine-tune" and q["large|similar"]["margin"] == pytest.approx(0.2)
    assert "small|different" not in q


def test_tiny_study_end_to_end_resume_and_report(tmp_path, ray_session):
    from rtl.study.report import write_report
    from rtl.study.runner import cell_runs, run_study, study_tracker
    from rtl.sweep.cache import PretrainCache

    spec = load_study_spec(_workspace(tmp_path, strategies=["scratch", "source", "imagenet"]))
    rd = run_study(spec)
    tracker = study_tracker(spec)
    plan = json.loads(Path(rd, "plan.json").read_text())
    runs = cell_runs(tracker)
    # exactly one MLflow run per cell, each finished with its result
    assert sorted(r.data.tags["rtl.cell"] for r in runs) == sorted(c["id"] for c in plan["cells"])
    assert all(r.info.status == "FINISHED" and "rtl.final" in r.data.tags for r in runs)
    assert {r.data.params["n_train"] for r in runs} == {"2", "8"}
    # one pretraining for the 'source' row, shared by both sizes (a cache hit for the second)
    stats = PretrainCache(spec.cache_dir()).stats()
    assert stats == {"miss": 1, "hit": 1}, stats
    assert len(tracker.find_runs({"rtl.kind": "pretrain"})) == 1, [r.data.tags for r in tracker.find_runs(
        {"rtl.kind": "pretrain"})]
    assert len({r.data.tags["rtl.pretrain_run_id"] for r in runs if r.data.tags["rtl.strategy"] == "source"}) == 1

    # a driver killed before Tune saved its state, one cell killed mid-fine-tune: only that cell runs again
    shutil.rmtree(Path(rd, "ray_results"))
    victim = next(r for r in runs if r.data.tags["rtl.strategy"] == "source")
    tracker.client.delete_tag(victim.info.run_id, "rtl.final")
    run_study(spec)
    starts = {r.data.tags["rtl.cell"]: r.data.tags["rtl.finetune_starts"] for r in cell_runs(tracker)}
    assert len(starts) == len(plan["cells"])
    assert starts == {c["id"]: "2" if c["id"] == victim.data.tags["rtl.cell"] else "1" for c in plan["cells"]}, starts
    run_study(spec)  # restores the finished experiment: nothing runs
    assert {r.data.tags["rtl.cell"]: r.data.tags["rtl.finetune_starts"] for r in cell_runs(tracker)} == starts
    assert PretrainCache(spec.cache_dir()).stats()["miss"] == 1

    html = Path(write_report(rd))
    out = html.parent
    d = json.loads((out / "data.json").read_text())
    assert set(d["errors"]["tgt"]) == {"scratch", "source"} and set(d["errors"]["tgt"]["source"]) == {"1", "5"}
    errs = {(r.data.tags["rtl.strategy"], r.data.tags["rtl.size"]): json.loads(r.data.tags["rtl.final"])["test_error"]
            for r in cell_runs(tracker)}
    for (row, size), e in errs.items():
        assert d["errors"]["tgt"][row][size][0] == pytest.approx(e)  # the bar is the cell's test error (n=1)
    assert set(d["gain"]["tgt"]) == {"source"}
    for size in ("1", "5"):
        assert d["gain"]["tgt"]["source"][size][0] == pytest.approx(errs[("scratch", size)] - errs[("source", size)])
    assert set(d["heatmap"]["tgt"]["5"]) == {"scratch", "source"}
    for f in ("errors_tgt.png", "gain_tgt.png", "heatmap_tgt.png"):
        assert (out / f).stat().st_size > 1000 and d["figures"][f.split("_")[0]]["tgt"] == f
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 3 and "imagenet" in page and "Findings" in page
    assert "source" in d["transferability"]["tgt"]["scores"]
    logged = {a.path for a in tracker.client.list_artifacts(tracker.find_runs({"rtl.kind": "study"})[0].info.run_id,
                                                              "report")}
    assert "report/report.html" in logged


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    from rtl.cli import main

    assert main(["study", "report", str(tmp_path)]) == 2
    assert main(["study", "run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not a study results dir" in err[0] and "cannot read study spec" in err[1]


def test_corpus_and_quadrant_figures_are_drawn_only_from_their_data(tmp_path):
    from rtl.study.report import fig_corpus, fig_quadrants

    m = {"counts_before": {"0": 500, "1": 20}, "counts_after": {"0": 300, "1": 20},
         "size_hist_before": {"128-255": 400, "256-511": 120}, "size_hist_after": {"32-63": 320}}
    assert fig_corpus(m, tmp_path) == "corpus.png" and (tmp_path / "corpus.png").stat().st_size > 1000
    assert fig_corpus({"classes": []}, tmp_path / "x") is None  # a corpus without histograms: no empty figure
    q = {"small|similar": {"mean": -0.1, "std": 0.02, "n": 3, "winner": "probe", "margin": 0.1}}
    assert fig_quadrants({"quadrants": q}, tmp_path) == "probe_vs_finetune.png"
    assert fig_quadrants({"quadrants": {"_note": "needs a probe mode"}}, tmp_path) is None


def test_shipped_demo_study_spec_is_valid():
    spec = load_study_spec(Path(__file__).resolve().parents[1] / "studies" / "demo.yaml")
    assert {m.probe for m in spec.modes} == {True, False} and len(spec.seeds) >= 2
    assert "scratch" in [s.row for s in spec.strategies] and len(spec.train_sizes.values) >= 2
