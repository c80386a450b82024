"""Label agreement (rtl.sweep.agreement): the specialists' chosen set gains the sources whose labels mean what
the best-probed source's labels mean -- a gray scan of the same defects -- and not a source whose labels follow
a shortcut (a per-class tint, defects drawn regardless). Specialists are trained in-process (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sweep_helpers import COLS, write_spec

from rtl.sweep.agreement import channel_stats, kappa, match_imaging
from rtl.sweep.spec import load_spec

LABELS = ("ok", "q0", "q1", "q2")  # q<i>: a red bar in horizontal band i; ok: none
TINT = {"ok": (1.0, 1.0, 1.0), "q0": (1.3, 0.8, 0.8), "q1": (0.8, 1.3, 0.8), "q2": (0.8, 0.8, 1.3)}


def _image(rng: np.random.Generator, band: int | None, side: int) -> np.ndarray:
    """Noise, plus a red bar in horizontal band `band` (0 top .. 2 bottom) unless None: flips keep the class."""
    img = rng.integers(20, 70, size=(side, side, 3)).astype(np.float32)
    if band is not None:
        y0 = band * side // 3
        img[y0 + 3: y0 + side // 3 - 3, 6: side - 6, 0] += 170
    return img


def _write_corpus(root: Path, per_class: int = 24) -> None:
    """col: colour; gray: the same defects, gray scan; tint: the label follows a colour cast, the bar's band
    is drawn regardless of it; far1-4: other class names (never compared)."""
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {k: [] for k in COLS}
    classes: list[dict] = []
    plan = ([("col", LABELS), ("gray", LABELS), ("tint", LABELS), ("part", ("ok", "q0", "z"))]
            + [(f"far{i}", ("ok", "x", "y")) for i in (1, 2, 3, 4)])
    for ds, labels in plan:
        for lb in labels:
            cid = len(classes)
            classes.append({"id": cid, "dataset": ds, "label": lb, "domain": [ds]})
            for j in range(per_class):
                side = int(rng.integers(32, 37))
                if ds == "tint":
                    img = _image(rng, [None, 0, 1, 2][int(rng.integers(0, 4))], side) * np.array(TINT[lb], np.float32)
                elif ds.startswith("far"):
                    img = _image(rng, {"ok": None, "x": 3, "y": 0}[lb], side)
                elif ds == "part":  # col's ok and q0, and a defect of its own (z)
                    img = _image(rng, {"ok": None, "q0": 0, "z": 2}[lb], side)
                else:
                    img = _image(rng, None if lb == "ok" else int(lb[1]), side)
                img = np.clip(img, 0, 255).astype(np.uint8)
                if ds == "gray":
                    y = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round()
                    img = np.repeat(y.astype(np.uint8)[..., None], 3, axis=2)
                split = "train" if j < per_class - 8 else "val" if j < per_class - 4 else "test"
                for k, v in zip(COLS, (img.tobytes(), side, side, 3, cid, ds, lb, f"images/{lb}/{j:03d}.png", 0,
                                       split)):
                    cols[k].append(v)
    types = [pa.binary(), pa.int32(), pa.int32(), pa.int32(), pa.int32(), pa.string(), pa.string(), pa.string(),
             pa.int32(), pa.string()]
    (root / "shards").mkdir(parents=True)
    pq.write_table(pa.table(cols, schema=pa.schema(list(zip(COLS, types)))), root / "shards/part-00000.parquet")
    manifest = {"version": "agreetest0000001", "params": {"min_side": 32, "max_side": 40, "seed": 0},
                "datasets": {ds: {"domain": [ds], "root": f"/x/{ds}"} for ds, _ in plan},
                "classes": classes, "shards": ["shards/part-00000.parquet"]}
    (root / "manifest.json").write_text(json.dumps(manifest))


def _write_target(root: Path, *, shuffled: bool = False, per_split: tuple[int, int, int] = (8, 4, 4)) -> str:
    """A colour target with col's classes (`shuffled`: the label does not follow the bar)."""
    import yaml
    from PIL import Image

    rng = np.random.default_rng(3)
    rows, splits = [], {"train": [], "val": [], "test": []}
    for lb in LABELS:
        (root / "images" / lb).mkdir(parents=True, exist_ok=True)
        j = 0
        for split, n in zip(("train", "val", "test"), per_split):
            for _ in range(n):
                q = [None, 0, 1, 2][int(rng.integers(0, 4))] if shuffled else (None if lb == "ok" else int(lb[1]))
                rel = f"images/{lb}/{j:03d}.png"
                Image.fromarray(np.clip(_image(rng, q, 36), 0, 255).astype(np.uint8)).save(root / rel)
                rows.append((rel, lb))
                splits[split].append(rel)
                j += 1
    (root / "dataset.yaml").write_text(yaml.safe_dump({"name": root.name, "domain": ["col"], "description": "t",
                                                       "license": "test"}))
    (root / "labels.csv").write_text("image,label\n" + "".join(f"{r},{lb}\n" for r, lb in rows))
    (root / "ImageSets/Main").mkdir(parents=True)
    for sp, items in splits.items():
        (root / f"ImageSets/Main/{sp}.txt").write_text("".join(f"{r}\n" for r in items))
    return str(root)


def _spec(tmp_path: Path, agreement: float | None, prune: bool = False):
    if not (tmp_path / "corpus").exists():
        _write_corpus(tmp_path / "corpus")
    return load_spec(write_spec(
        tmp_path, name=f"agree{agreement}{'p' if prune else ''}",
        search={"sources": {"space": "ranked", "ranking": {"method": "specialists"}, "importance_candidates": {
            "variants": [{"specialists": True}], "specialist_fraction": 1.0, "specialist_agreement": agreement,
            "specialist_prune": prune}},
            "temperature": {"low": 0.5, "high": 4.0, "allow_off": True}, "lr": {"low": 0.01, "high": 0.1},
            "freeze_depth": {"low": 0, "high": 1}},
        budget={"pretrain_epochs": 3, "finetune_epochs": 1, "trials_per_target": 2, "max_concurrent": 1,
                "batch_size": 16}))


# the probe on the target put col first, alone before the largest gap; tint, far1 and gray probe no worse than
# the median unit (gray: the median), so only their labels can tell them apart
LOSSES = {"col": 0.1, "tint": 0.9, "far1": 0.95, "gray": 1.0, "far2": 1.1, "far3": 1.2, "far4": 1.3}


def test_a_gray_scan_of_the_best_source_is_added_and_a_shortcut_source_is_not(tmp_path: Path) -> None:
    from rtl.sweep import specialists

    spec = _spec(tmp_path, 0.2)
    target = _write_target(tmp_path / "targets" / "colour")
    assert specialists.choose(LOSSES) == ["col"]
    chosen, info = specialists.chosen_set(spec, LOSSES, 0, 1.0, target)
    assert chosen == ["col", "gray"] and info["added"] == ["gray"] and info["anchor"] == "col"
    assert info["target"]["shared"] == 4 and info["target"]["agreement"] >= 0.5  # col's labels mean the target's
    assert info["agreement"]["gray"] >= 0.5 > 0.2 > info["agreement"]["tint"]
    assert set(info["agreement"]) == {"tint", "gray"}  # far1 shares one class name (ok): not compared
    assert info["shared"]["far1"] == 1 and info["shared"]["gray"] == 4
    # only the compared units' specialists were built (not the far ones)
    built = {json.loads((d / "specialist.json").read_text())["unit"] for d in Path(spec.cache_dir()).glob("spec-*")}
    assert built == {"col", "gray", "tint"}  # far1 passed the gate but was not compared
    # off: the probe's cut alone, nothing measured
    assert specialists.chosen_set(_spec(tmp_path, None), LOSSES, 0, 1.0, target) == (["col"], None)


@pytest.mark.parametrize("kind", ["other names", "labels that do not follow the defect"])
def test_nothing_is_added_when_the_best_sources_labels_do_not_mean_the_targets(tmp_path: Path, kind: str) -> None:
    """The gate: on a target without a related source the best-probed unit is an unrelated one, and its own
    relatives agree with it, not with the target -- nothing is added unless the anchor's head reads the
    target's train + val labels by name."""
    from rtl.sweep import specialists

    spec = _spec(tmp_path, 0.2)
    target = (str(tmp_path / "targets" / "tgt") if kind == "other names"  # ok / bad: one shared name
              else _write_target(tmp_path / "targets" / "shuffled", shuffled=True))
    chosen, info = specialists.chosen_set(spec, LOSSES, 0, 1.0, target)
    assert chosen == ["col"] and info["added"] == [] and info["agreement"] == {}
    if kind == "other names":
        assert info["target"] == {"shared": 1, "agreement": None}
    else:
        assert info["target"]["shared"] == 4 and info["target"]["agreement"] < 0.2


# the probe's cut holds col and two extras beside it: tint (its labels follow a colour cast) and far1 (other
# class names); gray (the related gray scan) probes at the median
LOSSES_CUT = {"col": 0.1, "tint": 0.12, "far1": 0.14, "gray": 1.0, "far2": 1.1, "far3": 1.2, "far4": 1.3}


def test_the_prune_keeps_only_the_cut_members_whose_labels_agree_with_the_best(tmp_path: Path) -> None:
    """`specialist_prune`: when the anchor's labels mean the target's, a member of the probe's cut whose labels
    disagree with the anchor's (a shortcut source) or cannot be compared with them (other class names) is
    dropped, and told as dropped; without the prune the cut stays whole."""
    from rtl.sweep import specialists

    target = _write_target(tmp_path / "targets" / "colour")
    assert specialists.choose(LOSSES_CUT) == ["col", "tint", "far1"]
    chosen, info = specialists.chosen_set(_spec(tmp_path, 0.2, prune=True), LOSSES_CUT, 0, 1.0, target)
    assert chosen == ["col", "gray"] and info["added"] == ["gray"] and info["prune"] is True
    assert set(info["dropped"]) == {"tint", "far1"}
    assert "disagree with col" in info["dropped"]["tint"] and "shares 1 class names" in info["dropped"]["far1"]
    kept, info = specialists.chosen_set(_spec(tmp_path, 0.2), LOSSES_CUT, 0, 1.0, target)
    assert kept == ["col", "tint", "far1", "gray"] and info["dropped"] == {}
    # the anchor is the best-probed member whose labels read the target's, not always the cut's first: far1
    # probes best but shares one class name with the target -> col anchors, far1 and tint are judged by it
    first_far = LOSSES_CUT | {"far1": 0.05}
    assert specialists.choose(first_far) == ["far1", "col", "tint"]
    chosen, info = specialists.chosen_set(_spec(tmp_path, 0.2, prune=True), first_far, 0, 1.0, target)
    assert chosen == ["col", "gray"] and info["anchor"] == "col" and set(info["dropped"]) == {"far1", "tint"}
    assert info["gates"]["far1"] == {"shared": 1, "agreement": None} and info["target"]["agreement"] >= 0.5
    kept, info = specialists.chosen_set(_spec(tmp_path, 0.2), first_far, 0, 1.0, target)  # without: far1 anchors
    assert kept == ["far1", "col", "tint"] and info["anchor"] == "far1" and info["added"] == []
    # a member sharing only `ok` and one defect name with the anchor (a related dataset with a partial vocabulary)
    # is judged on those two, and kept when it agrees; one sharing `ok` alone is dropped
    part = {"col": 0.1, "part": 0.12, "far1": 0.14, "tint": 0.9, "gray": 1.0, "far2": 1.1, "far3": 1.2, "far4": 1.3}
    assert specialists.choose(part) == ["col", "part", "far1"]
    chosen, info = specialists.chosen_set(_spec(tmp_path, 0.2, prune=True), part, 0, 1.0, target)
    assert chosen == ["col", "part"] and info["shared"]["part"] == 2 and info["agreement"]["part"] >= 0.5
    assert list(info["dropped"]) == ["far1"]
    # the gate holds for the prune too: labels that do not follow the defect -> the cut is left as it is
    shuffled = _write_target(tmp_path / "targets" / "shuffled", shuffled=True)
    chosen, info = specialists.chosen_set(_spec(tmp_path, 0.2, prune=True), LOSSES_CUT, 0, 1.0, shuffled)
    assert chosen == ["col", "tint", "far1"] and info["dropped"] == {} and info["target"]["agreement"] < 0.2


def test_the_median_gate_keeps_a_source_that_probes_badly_out(tmp_path: Path) -> None:
    """A unit whose labels agree but that probes the target worse than the median unit is not added: the
    agreement only brings in what the target's own evidence does not rule out."""
    from rtl.sweep import specialists

    spec = _spec(tmp_path, 0.2)
    losses = LOSSES | {"gray": 1.5}
    chosen, info = specialists.chosen_set(spec, losses, 0, 1.0, _write_target(tmp_path / "targets" / "colour"))
    assert chosen == ["col"] and "gray" not in info["agreement"]


def test_the_ranking_shows_the_agreement_and_the_added_units() -> None:
    from rtl.sweep.specialists import format_ranking

    r = {"target": "t", "by": "datasets", "verdict": "by specialists' probe loss; they keep col; labels agree with "
         "col's: + gray", "cost": {"specialist_images": 10, "fraction": 0.25},
         "agreement": {"anchor": "col", "added": ["gray"], "agreement": {"gray": 0.9, "tint": 0.0}},
         "rows": [{"rank": 1, "unit": "col", "probe_loss": 0.1, "chosen": True},
                  {"rank": 2, "unit": "tint", "probe_loss": 0.9, "chosen": False, "agreement": 0.0},
                  {"rank": 3, "unit": "gray", "probe_loss": 1.0, "chosen": True, "agreement": 0.9}]}
    text = format_ranking(r)
    assert "agrees with col" in text and "0.90" in text and "+ gray" in text
    assert "dropped" not in text
    r["agreement"]["dropped"] = {"tint": "labels disagree with col's (kappa 0.00)"}
    assert any(line.split()[1] == "tint" and line.rstrip().endswith("dropped")
               for line in format_ranking(r).splitlines()[3:6])


@pytest.mark.parametrize("pred, truth, expected", [
    (["a", "b", "c"], ["a", "b", "c"], 1.0),        # perfect
    (["a", "a", "a"], ["a", "b", "c"], 0.0),        # one class for everything: chance
    (["b", "c", "a"], ["a", "b", "c"], -0.5),       # always wrong: below chance
])
def test_kappa_is_zero_at_chance_and_one_when_perfect(pred, truth, expected) -> None:
    assert kappa(np.array(pred), np.array(truth), ["a", "b", "c"]) == pytest.approx(expected)


def test_a_gray_image_set_is_put_in_a_colour_sources_imaging_and_back() -> None:
    rng = np.random.default_rng(0)
    colour = rng.uniform(0, 1, (20, 3, 8, 8)).astype(np.float32) * np.array([0.9, 0.5, 0.2], np.float32)[:, None, None]
    gray = np.repeat(rng.uniform(0.2, 0.6, (20, 1, 8, 8)).astype(np.float32), 3, axis=1)
    m = match_imaging(gray, channel_stats(colour), gray=False)  # per-channel dataset mean / std of the reference
    assert np.allclose(m.mean(axis=(0, 2, 3)), colour.mean(axis=(0, 2, 3)), atol=0.02)
    assert np.allclose(m.std(axis=(0, 2, 3)), colour.std(axis=(0, 2, 3)), atol=0.02)
    g = match_imaging(colour, channel_stats(gray), gray=True)  # a gray head sees colour images as luma
    assert np.allclose(g[:, 0], g[:, 1]) and np.allclose(g[:, 1], g[:, 2])


def test_the_trial_tag_and_the_report_name_what_the_agreement_added(tmp_path: Path, monkeypatch) -> None:
    """From the cut's specialists.json (what `chosen_set` measured) to the trial's `rtl.specialists` tag to
    the report's line: the probe's cut and the added units are told apart, with their agreement."""
    from types import SimpleNamespace

    import rtl.report.sweep as rep
    from rtl.sweep.specialists import SCORES_FILE
    from rtl.sweep.trial import specialists_said

    (tmp_path / SCORES_FILE).write_text(json.dumps({
        "probe_loss": {"weave_a": 0.29, "weave_c": 0.9, "grid_b": 0.8, "marble_a": 1.3}, "chosen": ["weave_a", "weave_c"],
        "agreement": {"anchor": "weave_a", "threshold": 0.2, "agreement": {"weave_c": 0.512, "grid_b": 0.05},
                      "shared": {"weave_c": 4, "grid_b": 4}, "added": ["weave_c"]}}))
    said = specialists_said(tmp_path)
    assert json.loads(said)["added"] == {"weave_c": 0.512} and json.loads(said)["anchor"] == "weave_a"
    monkeypatch.setattr(rep, "target_trials", lambda results_dir, target: [
        SimpleNamespace(user_attrs={"rtl.specialists": said})])
    text = "\n".join(rep._specialists_md("r", "t"))
    assert "chose **weave_a** (before the largest gap) + **weave_c**, whose labels agree with weave_a's" in text
    assert "kappa 0.51" in text
    # the prune: a member of the cut dropped, and why, from specialists.json to the report
    d = json.loads((tmp_path / SCORES_FILE).read_text())
    d["agreement"] |= {"prune": True, "dropped": {"grid_b": "labels disagree with weave_a's (kappa 0.05)"}}
    (tmp_path / SCORES_FILE).write_text(json.dumps(d))
    said = specialists_said(tmp_path)
    assert json.loads(said)["dropped"] == {"grid_b": "labels disagree with weave_a's (kappa 0.05)"}
    monkeypatch.setattr(rep, "target_trials", lambda results_dir, target: [
        SimpleNamespace(user_attrs={"rtl.specialists": said})])
    text = "\n".join(rep._specialists_md("r", "t"))
    assert "dropped from the cut: grid_b (labels disagree with weave_a's (kappa 0.05))" in text


def test_class_names_are_compared_as_the_candidates_compare_them() -> None:
    """"Dead_Pixel" in one dataset and "dead-pixel" in another are the same class name (rtl.sweep.candidates
    .normal_name); "scratch" and "scuff" are not."""
    from rtl.sweep.agreement import ImageSet, shared_names

    a = ImageSet(np.zeros((3, 3, 4, 4), np.uint8), ["OK", "Dead_Pixel", "scratch"])
    b = ImageSet(np.zeros((3, 3, 4, 4), np.uint8), ["ok", "dead-pixel", "scuff"])
    assert shared_names(a, b) == ["dead pixel", "ok"]


def test_plurals_and_a_users_aliases_make_class_names_comparable(tmp_path: Path) -> None:
    """Datasets that name one defect differently are compared once the spec says so (`class_aliases`); regular
    plurals need nothing ("Scratches" = "scratch"). An alias chain is refused with a one-line reason."""
    from rtl.errors import RtlError
    from rtl.sweep.agreement import ImageSet, shared_names
    from rtl.sweep.spec import ImportanceCandidates

    a = ImageSet(np.zeros((4, 3, 4, 4), np.uint8), ["OK", "Scratches", "dots", "cross"])
    b = ImageSet(np.zeros((4, 3, 4, 4), np.uint8), ["good", "scuff", "Dot", "crosses"])
    assert shared_names(a, b) == ["cross", "dot"]
    c = ImportanceCandidates(class_aliases={"Good": "OK", "scuffs": "scratch"})
    assert c.class_aliases == {"good": "ok", "scuff": "scratch"}
    b2 = ImageSet(np.zeros((4, 3, 4, 4), np.uint8), ["good", "scuff", "Dot", "crosses"],
                  tuple(sorted(c.class_aliases.items())))
    assert shared_names(a, b2) == ["cross", "dot", "ok", "scratch"]
    path = write_spec(tmp_path, name="alias", search={
        "sources": {"space": "ranked", "importance_candidates": {"class_aliases": {"scuff": "scrape", "scrape": "scratch"}}},
        "temperature": {"low": 0.5, "high": 4.0}, "lr": {"low": 0.01, "high": 0.1}, "freeze_depth": {"low": 0, "high": 1}})
    with pytest.raises(RtlError, match="class_aliases: scuff map to a name that is itself an alias"):
        load_spec(path)


def test_a_ranking_made_with_other_agreement_settings_is_not_read_back(tmp_path: Path, monkeypatch) -> None:
    """The importance candidate reads the ranking's choice back only when the ranking used the same threshold,
    prune and aliases; a ranking written before the prune existed (no "prune" key) reads as prune off."""
    import rtl.sweep.agreement as agreement
    from rtl.sweep import specialists

    losses = {"col": 0.1, "tint": 0.12, "gray": 1.0}
    said = {"suggested": ["col", "tint"], "agreement": {"anchor": "col", "threshold": 0.2, "added": []}}
    monkeypatch.setattr(specialists, "_ranking_by_same_specialists", lambda *a: said)
    monkeypatch.setattr(specialists, "_ranked_losses", lambda *a: losses)
    ran = []
    monkeypatch.setattr(agreement, "expand", lambda *a, **k: ran.append(k) or (["col"], {"prune": k["prune"]}))
    assert specialists.chosen_set(_spec(tmp_path, 0.2), losses, 0, 1.0, "t") == (["col", "tint"], said["agreement"])
    assert ran == []  # same settings: read back
    assert specialists.chosen_set(_spec(tmp_path, 0.2, prune=True), losses, 0, 1.0, "t")[0] == ["col"]
    assert ran == [{"prune": True, "aliases": {}}]  # the prune is on now: measured again
