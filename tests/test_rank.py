"""`rtl rank` on a two-source toy: source `a` is drawn like the target (same classes, same quadrant
squares), source `b` is unrelated (other quadrants). Experts come from the pretraining cache on a second
call; bad input is one line; a noise-only corpus gets the null verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sweep_helpers import COLS, write_corpus, write_target

from rtl.errors import RtlError

NOISE, CONTRAST = 120, 50  # target and `own` source: faint squares on a busy background


def _generalist(corpus: Path, out: Path, epochs: int = 4) -> Path:
    from rtl.train.pretrain import PretrainConfig, pretrain_local

    cfg = PretrainConfig(corpus=str(corpus), strategy="source", model="small_cnn", out=str(out), epochs=epochs,
                         batch_size=8, lr=0.05, warmup_epochs=0.0, storage_path=str(out.parent / "runs"))
    return pretrain_local(cfg)


def _faint_target(root: Path, per_split: tuple[int, int, int] = (3, 8, 2)) -> Path:
    """Like `write_target` but with a faint square on a busier background: the init's features matter."""
    from PIL import Image

    t = write_target(root, "tgt", per_split=per_split)
    rng = np.random.default_rng(7)
    for line in (t / "labels.csv").read_text().splitlines()[1:]:
        rel, label = line.split(",")
        ci = ["ok", "bad"].index(label)
        img = rng.integers(0, NOISE, size=(36, 36, 3), dtype=np.uint8)
        img[(ci // 2) * 18: (ci // 2) * 18 + 18, (ci % 2) * 18: (ci % 2) * 18 + 18] += CONTRAST
        Image.fromarray(img).save(t / rel)
    return t


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rank")
    corpus = write_corpus(root / "corpus", per_class=12)
    target = _faint_target(root / "tgt")
    return {"root": root, "corpus": corpus, "target": target, "gen": _generalist(corpus, root / "gen")}


def _cfg(toy: dict[str, Path], **kw):
    from rtl.select.rank import RankConfig

    base = dict(target=str(toy["target"]), corpus=str(toy["corpus"]), generalist=str(toy["gen"]),
                expert_fraction=0.5, seeds=[0, 1, 2], finetune_epochs=3, finetune_lr=0.05, batch_size=8,
                source_images=16, cache_dir=str(toy["root"] / "cache"))
    return RankConfig(**(base | kw))


def test_rank_related_source_first_and_experts_cached(toy: dict[str, Path]) -> None:
    from rtl.select.rank import rank_target, read_ranking, write_ranking

    r = rank_target(_cfg(toy), log=lambda *_: None)
    rows = {x["unit"]: x for x in r["rows"]}
    assert r["order"][0] == "a"  # the source drawn like the target ranks first
    assert rows["a"]["importance"] > rows["b"]["importance"]
    assert rows["a"]["distance"] < rows["b"]["distance"]
    assert {x["verdict"] for x in r["rows"]} <= {"helps", "neutral", "hurts"}
    assert len(r["generalist_row"]["finetune_accs"]) == 3 and len(r["scratch_row"]["finetune_accs"]) == 3  # per seed
    assert sorted(r["cost"]["experts_built"]) == ["a", "b"]
    # a second call builds nothing: the experts come from the pretraining cache
    again = rank_target(_cfg(toy), log=lambda *_: None)
    assert again["cost"]["experts_built"] == [] and again["order"] == r["order"]
    p = write_ranking(toy["root"] / "r.json", r)
    assert read_ranking(p)["suggested"] == r["suggested"]


def test_rank_cli_prints_table_and_writes_json(toy: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    from rtl.cli import main

    out = toy["root"] / "cli.json"
    rc = main(["rank", "--target", str(toy["target"]), "--corpus", str(toy["corpus"]), "--generalist",
               str(toy["gen"]), "--expert-fraction", "0.5", "--seeds", "0", "--finetune-epochs", "1",
               "--batch-size", "8", "--source-images", "8", "--cache", str(toy["root"] / "cache"),
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "(generalist)" in text and "(scratch)" in text and "verdict:" in text
    assert json.loads(out.read_text())["target"] == "tgt"


def test_rank_bad_input_is_one_line(toy: dict[str, Path], tmp_path: Path) -> None:
    from rtl.select.rank import rank_target

    with pytest.raises(RtlError, match="not a dataset of"):
        rank_target(_cfg(toy, units=["zzz"]), log=lambda *_: None)
    with pytest.raises(RtlError, match="no such path"):
        _cfg(toy, generalist=str(tmp_path / "missing"))
    other = write_corpus(tmp_path / "other", per_class=3)
    m = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(m | {"version": "otherversion0001"}))
    with pytest.raises(RtlError, match="trained on corpus version"):
        rank_target(_cfg(toy, corpus=str(other)), log=lambda *_: None)
    one = write_target(tmp_path / "one", "one")
    (one / "labels.csv").write_text("image,label\n" + "".join(
        f"{line.split(',')[0]},ok\n" for line in (one / "labels.csv").read_text().splitlines()[1:]))
    with pytest.raises(RtlError, match="at least 2"):
        rank_target(_cfg(toy, target=str(one)), log=lambda *_: None)
    assert not list((toy["root"] / "cache" / "tmp").glob("*"))  # nothing half-written in the cache


def _toy_corpus(root: Path, *, own: bool, n: int = 16) -> Path:
    """Source `own` is drawn exactly like the target (its classes, faint quadrant squares, same labels);
    source `noise` is pure noise with arbitrary labels. own=False: two noise sources."""
    rng = np.random.default_rng(5)
    first = "own" if own else "noise2"
    classes = [{"id": i, "dataset": ds, "label": lb, "domain": ["x"]}
               for i, (ds, lb) in enumerate([(first, "ok"), (first, "bad"), ("noise", "p"), ("noise", "q")])]
    cols: dict[str, list] = {k: [] for k in COLS}
    for c in classes:
        for j in range(n):
            if c["dataset"] == "own":
                img = rng.integers(0, NOISE, size=(36, 36, 3), dtype=np.uint8)
                q = c["id"]  # ok -> quadrant 0, bad -> quadrant 1, as in the target
                img[(q // 2) * 18: (q // 2) * 18 + 18, (q % 2) * 18: (q % 2) * 18 + 18] += CONTRAST
            else:
                img = rng.integers(0, 255, size=(36, 36, 3), dtype=np.uint8)
            for k, v in zip(COLS, (img.tobytes(), 36, 36, 3, c["id"], c["dataset"], c["label"],
                                   f"images/{j}.png", 0, "train")):
                cols[k].append(v)
    types = [pa.binary(), pa.int32(), pa.int32(), pa.int32(), pa.int32(), pa.string(), pa.string(), pa.string(),
             pa.int32(), pa.string()]
    (root / "shards").mkdir(parents=True)
    pq.write_table(pa.table(cols, schema=pa.schema(list(zip(COLS, types)))), root / "shards/part-00000.parquet")
    (root / "manifest.json").write_text(json.dumps({
        "version": f"toy{int(own)}000000000000", "params": {"min_side": 32, "max_side": 40, "seed": 0},
        "datasets": {first: {"domain": ["x"], "root": "/x"}, "noise": {"domain": ["x"], "root": "/y"}},
        "classes": classes, "shards": ["shards/part-00000.parquet"]}))
    return root


def test_own_data_ranks_first_and_verdicts_follow_the_noise_rule(toy: dict[str, Path], tmp_path: Path) -> None:
    """Source `own` (drawn like the target) ranks above pure noise; every verdict is the 2-sigma rule on
    the signed gain, with a noise floor of one val image (a smaller gain cannot be told from chance)."""
    from rtl.select.rank import rank_target

    corpus = _toy_corpus(tmp_path / "c", own=True)
    gen = _generalist(corpus, tmp_path / "gen", epochs=1)
    r = rank_target(_cfg(toy, corpus=str(corpus), generalist=str(gen), cache_dir=str(tmp_path / "cache"),
                         expert_fraction=1.0), log=lambda *_: None)
    assert r["order"][0] == "own"
    n_val = 2 * 8
    for x in r["rows"]:
        assert x["noise"] >= 1.0 / n_val
        want = "helps" if x["gain"] > 2 * x["noise"] else "hurts" if x["gain"] < -2 * x["noise"] else "neutral"
        assert x["verdict"] == want
    assert (r["suggested"] == []) == r["verdict"].startswith("no source helps")


def test_noise_sources_get_the_null_verdict(toy: dict[str, Path], tmp_path: Path) -> None:
    from rtl.select.rank import rank_target

    corpus = _toy_corpus(tmp_path / "noise", own=False)
    gen = _generalist(corpus, tmp_path / "gen")
    r = rank_target(_cfg(toy, corpus=str(corpus), generalist=str(gen), cache_dir=str(tmp_path / "cache")),
                    log=lambda *_: None)
    assert r["suggested"] == [] and r["verdict"].startswith("no source helps")
    assert r["recommend"] in ("generalist", "scratch")
