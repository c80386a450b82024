"""Inference over a target and the `rtl select` command."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from rtl.errors import RtlError
from rtl.models.backbones import create_model
from rtl.select.inference import convert_channels, infer
from rtl.train.target_data import mean_std


class _Tensors(Dataset):
    """(image (C, H, W) normalised, label) pairs from uint8 pixels, like the target loader yields."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray) -> None:  # pixels (N, H, W, C) uint8
        mean, std = mean_std(pixels.shape[-1])  # (C, 1, 1)
        self.x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        self.y = labels

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def _pixels(n: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, c), dtype=np.uint8)


def _model(in_channels: int = 3, k: int = 5):
    torch.manual_seed(0)
    return create_model("small_cnn", k, in_channels=in_channels).eval()


def test_infer_returns_logits_features_labels_consistent_with_forward() -> None:
    model = _model()
    data = _Tensors(_pixels(10, 3), np.arange(10) % 3)
    out = infer(model, data, batch_size=4, num_threads=1)
    assert out.logits.shape == (10, 5) and out.features.shape == (10, model.feature_dim)
    np.testing.assert_array_equal(out.labels, np.arange(10) % 3)
    with torch.no_grad():
        want = model(data.x).numpy()
    np.testing.assert_allclose(out.logits, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.probs().sum(1), 1.0)


def test_channel_mismatch_is_converted_like_to_channels() -> None:
    from rtl.data.transforms import to_channels

    gray = _pixels(6, 1)
    rgb_of_gray = np.stack([to_channels(im, 3) for im in gray])
    m3 = _model(3)
    a = infer(m3, _Tensors(gray, np.zeros(6, int)), num_threads=1)
    b = infer(m3, _Tensors(rgb_of_gray, np.zeros(6, int)), num_threads=1)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-5)
    rgb = _pixels(6, 3, seed=1)
    m1 = _model(1)
    c = infer(m1, _Tensors(rgb, np.zeros(6, int)), num_threads=1)
    d = infer(m1, _Tensors(np.stack([to_channels(im, 1) for im in rgb]), np.zeros(6, int)), num_threads=1)
    np.testing.assert_allclose(c.logits, d.logits, rtol=1e-3, atol=2e-3)  # luma rounding to uint8 in d
    with pytest.raises(RtlError, match="4-channel"):
        convert_channels(torch.zeros(1, 4, 8, 8), 3)


def test_empty_target_is_a_clear_error() -> None:
    with pytest.raises(RtlError, match="no images"):
        infer(_model(), _Tensors(_pixels(0, 3), np.zeros(0, int)))


def test_large_target_splits_over_ray_tasks(ray_session) -> None:
    model = _model()
    t = _Tensors(_pixels(12, 3, seed=2), np.arange(12) % 4)
    data = TensorDataset(t.x, torch.from_numpy(t.y))  # importable by Ray workers (the test module is not)
    local = infer(model, data, num_threads=1)
    remote = infer(model, data, ray_threshold=5)  # 12 > 5 and Ray is up -> chunks over Ray tasks
    np.testing.assert_allclose(remote.logits, local.logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(remote.labels, local.labels)


# ------------------------------------------------------------------ end to end: corpus + checkpoint + CLI
S = 32  # image side
SOURCES = {"red": ("h", "v"), "green": ("h", "v"), "blue": ("dots", "plain")}
COLOURS = {"red": (200, 40, 40), "green": (40, 190, 40), "blue": (40, 40, 200)}


def _image(ds: str, label: str, rng: np.random.Generator) -> np.ndarray:
    """(S, S, 3) uint8: dataset colour + class pattern + noise."""
    img = np.zeros((S, S, 3), np.float64) + np.array(COLOURS[ds]) * rng.uniform(0.7, 1.0)
    stripes = (np.arange(S) // 4 % 2 == 0)
    if label == "h":
        img[stripes, :, :] *= 0.3
    elif label == "v":
        img[:, stripes, :] *= 0.3
    elif label == "dots":
        img[::6, ::6, :] = 255
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_corpus(root, per_class: int = 24) -> list[dict]:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from rtl.data.corpus import SCHEMA

    rng = np.random.default_rng(0)
    classes, rows = [], {f.name: [] for f in SCHEMA}
    for ds, labels in SOURCES.items():
        for label in labels:
            cid = len(classes)
            classes.append({"id": cid, "dataset": ds, "label": label, "domain": [ds]})
            for i in range(per_class):
                vals = dict(pixels=_image(ds, label, rng).tobytes(), height=S, width=S, channels=3, class_id=cid,
                            dataset=ds, label=label, source_path=f"images/{label}/{i}.png", patch=0, split="train")
                for k, v in vals.items():
                    rows[k].append(v)
    (root / "shards").mkdir(parents=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=SCHEMA), root / "shards" / "part-00000.parquet")
    manifest = {"version": "test0123456789ab", "params": {"min_side": S, "max_side": S},
                "datasets": {ds: {"domain": [ds], "root": "/nowhere"} for ds in SOURCES},
                "classes": classes, "shards": ["shards/part-00000.parquet"]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return classes


def _write_target(root, ds: str, n: int = 12, seed: int = 1, gray: bool = False) -> None:
    from PIL import Image

    from rtl.data.convention import ImageRecord, write_dataset_yaml, write_labels_csv, write_splits

    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        label = SOURCES[ds][i % 2]
        rel = f"images/{i:03d}.png"
        (root / "images").mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(_image(ds, label, rng))
        (im.convert("L") if gray else im).save(root / rel)
        recs.append(ImageRecord(path=rel, label=label, split="train" if i < n - 2 else "val"))
    write_dataset_yaml(root, name=f"target_{ds}", domain=[ds])
    write_labels_csv(root, recs)
    write_splits(root, recs)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 3-dataset corpus, a small_cnn really trained on it, an untrained one, and targets."""
    from rtl.data.corpus import open_corpus
    from rtl.train.checkpoint import save_checkpoint
    from rtl.train.corpus_data import CorpusDataset, read_view_table

    root = tmp_path_factory.mktemp("select")
    classes = _write_corpus(root / "corpus")
    view = open_corpus(root / "corpus")
    data = CorpusDataset(read_view_table(view), crop=S, train=False)
    torch.manual_seed(0)
    model = create_model("small_cnn", len(classes))
    untrained = create_model("small_cnn", len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    model.train()
    for _ in range(4):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    meta = {"corpus_version": view.version, "class_table": classes, "min_side": S, "max_side": S}
    save_checkpoint(root / "trained", model.eval(), meta)
    save_checkpoint(root / "untrained", untrained.eval(), meta)
    _write_target(root / "t_red", "red")
    _write_target(root / "t_blue_gray", "blue", gray=True)
    return root


def _cli(*argv: str) -> int:
    from rtl.cli import main

    return main([str(a) for a in argv])


def test_select_weights_puts_mass_on_the_source_the_target_came_from(world, capsys) -> None:
    from rtl.select.importance import read_weights

    out = world / "w.json"
    rc = _cli("select", "weights", "--target", world / "t_red", "--checkpoint", world / "trained", "--corpus", world / "corpus",
              "--temperature", "2.0", "--out", out, "--top-k", "3")
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "mass by dataset" in text and "top 3 source classes" in text
    w = read_weights(out)
    assert w.corpus_version == "test0123456789ab" and w.temperature == 2.0
    assert next(iter(w.datasets)) == "red" and w.datasets["red"] > 0.5
    assert w.suggested_datasets[0] == "red"
    assert sum(w.class_mass.values()) == pytest.approx(1.0)


def test_select_scores_rank_trained_checkpoint_first(world, capsys) -> None:
    import json

    out = world / "rank.json"
    rc = _cli("select", "scores", "--target", world / "t_red", "--corpus", world / "corpus", "--scores", "logme,leep,nce",
              "--checkpoints", world / "untrained", world / "trained", "--out", out)
    text = capsys.readouterr().out
    assert rc == 0, text
    ranking = json.loads(out.read_text())["ranking"]
    assert ranking[0]["checkpoint"].endswith("trained") and not ranking[0]["checkpoint"].endswith("untrained")
    assert {"logme", "leep", "nce", "mean_rank"} <= set(ranking[0])


def test_select_gray_target_on_rgb_model_runs(world, capsys) -> None:
    rc = _cli("select", "weights", "--target", world / "t_blue_gray", "--checkpoint", world / "trained", "--corpus",
              world / "corpus", "--out", world / "wg.json")
    assert rc == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    "verb,extra,msg",
    [
        ("weights", ["--split", "test"], "no usable images in split 'test'"),
        (None, [], "needs --model"),  # the deprecated spelling without a sub-verb
        ("scores", ["--scores", "logme,foo", "--checkpoints", "X"], "unknown score 'foo'"),
        ("weights", ["--checkpoint", "nowhere", "--out", "x.json"], "checkpoint nowhere not found"),
    ],
)
def test_select_bad_input_is_one_line_error(world, capsys, verb, extra, msg) -> None:
    base = ["select", *([verb] if verb else []), "--target", world / "t_red", "--corpus", world / "corpus"]
    if extra[:1] == ["--split"]:
        extra = extra + ["--checkpoint", world / "trained", "--out", world / "x.json"]
    rc = _cli(*base, *extra)
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err
