"""The hard synthetic family (`rtl synth --size hard`): layout, reproducible bytes, complete ground truth,
and one relation checked by training (a related source teaches what the target needs, a shortcut one not)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rtl.cli import main
from rtl.data.convention import check_dataset, load_dataset
from rtl.data.synth_hard import _specs, generate_dataset

SIDE = 32


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    out = tmp_path_factory.mktemp("hard") / "fam"
    assert main(["synth", str(out), "--size", "hard", "--seed", "0"]) == 0
    return out, json.loads((out / "relations.json").read_text())


def test_cli_layout_and_sizes(family, capsys):
    out, rel = family
    sources = sorted(p.name for p in (out / "sources").iterdir())
    targets = sorted(p.name for p in (out / "targets").iterdir())
    assert len(sources) >= 20 and len(targets) >= 8
    modes = set()
    for root in [out / "sources" / s for s in sources] + [out / "targets" / t for t in targets]:
        rep = check_dataset(root)
        assert rep.ok, [str(p) for p in rep.problems]
        info = rep.info
        assert info.domain and all(info.split(s) for s in ("train", "val", "test"))
        n = {c: sum(r.label == c for r in info.records) for c in info.classes()}
        if root.parent.name == "targets":
            assert 3 <= len(n) <= 4 and all(16 + 8 <= k <= 16 + 15 for k in n.values())
            assert all(sum(r.label == c for r in info.split("test")) == 8 for c in n)
        else:
            assert len(n) == 4 and all(40 <= k <= 80 for k in n.values())
        with Image.open(root / info.records[0].path) as im:
            assert 48 <= max(im.size) <= 96
            modes.add(im.mode)
    assert modes == {"L", "RGB"}


def test_relations_partition_every_pair(family):
    out, rel = family
    sources = {p.name for p in (out / "sources").iterdir()}
    assert set(rel) == {p.name for p in (out / "targets").iterdir()}
    no_related, shifted = 0, 0
    for target, v in rel.items():
        listed = v["related"] + v["harmful"] + v["unrelated"]
        assert sorted(listed) == sorted(sources), target  # every source exactly once
        assert set(v["shifted"]) <= set(v["related"])
        assert len(v["related"]) <= 3 and len(v["harmful"]) <= 2 and v["reason"]
        t_classes = set(load_dataset(out / "targets" / target).classes())
        for s in v["related"] + v["harmful"]:  # same class names: what makes the harmful ones harmful
            assert t_classes <= set(load_dataset(out / "sources" / s).classes())
        no_related += not v["related"]
        shifted += len(v["shifted"])
    assert no_related >= 2 and shifted >= 1
    # a shifted source really images differently: gray vs colour or another magnification
    modes = {}
    for d in (out / "sources").iterdir():
        info = load_dataset(d)
        with Image.open(d / info.records[0].path) as im:
            modes[d.name] = im.mode
    assert any(modes[s] != _mode(out / "targets" / t) for t, v in rel.items() for s in v["shifted"])


def _mode(root: Path) -> str:
    info = load_dataset(root)
    with Image.open(root / info.records[0].path) as im:
        return im.mode


def test_same_seed_same_bytes_other_seed_differs(family, tmp_path):
    out, _ = family
    specs = {s.name: s for s in _specs()}
    for name, kind in (("grid_b", "sources"), ("weave_b", "sources"), ("target_rings", "targets")):
        generate_dataset(specs[name], tmp_path / name, seed=0)
        assert _digest(tmp_path / name) == _digest(out / kind / name), name
    generate_dataset(specs["grid_b"], tmp_path / "other", seed=1)
    d0, d1 = _digest(out / "sources" / "grid_b"), _digest(tmp_path / "other")
    images = [k for k in d0 if k.startswith("images/")]
    assert sum(d0[k] != d1.get(k) for k in images) > len(images) // 2


# ------------------------------------------------------------------------------ one relation, by training


def _load(root: Path, split: str | None = None) -> tuple[torch.Tensor, list[str]]:
    info = load_dataset(root)
    recs = info.records if split is None else info.split(split)
    x = np.stack([np.asarray(Image.open(root / r.path).convert("RGB").resize((SIDE, SIDE), Image.BILINEAR))
                  for r in recs])  # (N, S, S, 3)
    return torch.tensor(x).permute(0, 3, 1, 2).float() / 255, [r.label for r in recs]


def _train_on(root: Path, epochs: int) -> tuple[torch.nn.Module, list[str]]:
    from rtl.models.backbones import create_model

    x, labels = _load(root)
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(c) for c in labels])
    torch.manual_seed(0)
    model = create_model("small_cnn", len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for b in torch.randperm(len(x), generator=g).split(32):
            xb = torch.flip(x[b], [3]) if torch.rand(1, generator=g).item() < 0.5 else x[b]
            loss = torch.nn.functional.cross_entropy(model(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), classes


@torch.no_grad()
def _ncm_accuracy(model, target: Path) -> float:
    """Nearest-class-mean probe on the frozen features: fit on the target's train split, score its test split."""
    xtr, ltr = _load(target, "train")
    xte, lte = _load(target, "test")
    ftr, fte = model.forward_features(xtr), model.forward_features(xte)  # (N, D)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    classes = sorted(set(ltr))
    means = torch.stack([ftr[[c == k for c in ltr]].mean(0) for k in classes])  # (K, D)
    pred = torch.cdist(fte, means).argmin(1)
    return float(np.mean([classes[p] == c for p, c in zip(pred.tolist(), lte)]))


@torch.no_grad()
def _head_accuracy(model, classes: list[str], target: Path) -> float:
    """The source classifier applied to the target's test images, its class names taken at face value."""
    x, labels = _load(target, "test")
    pred = model(x).argmax(1).tolist()
    return float(np.mean([classes[p] == c for p, c in zip(pred, labels)]))


def test_related_source_transfers_and_shortcut_source_does_not(family):
    out, rel = family
    t = "target_rings"
    related, harmful = rel[t]["related"][0], rel[t]["harmful"][0]
    unrelated = "stripes_c"  # busy stripes with other defects: a distractor
    assert unrelated in rel[t]["unrelated"]
    target = out / "targets" / t
    k = len(load_dataset(target).classes())
    m_rel, c_rel = _train_on(out / "sources" / related, epochs=12)
    m_harm, c_harm = _train_on(out / "sources" / harmful, epochs=12)
    m_unrel, _ = _train_on(out / "sources" / unrelated, epochs=12)
    # the related source's classifier already labels the target (same defects, same names) ...
    acc_rel = _head_accuracy(m_rel, c_rel, target)
    assert acc_rel > 1.5 / k
    # ... the shortcut source's, with the very same class names, does much worse: it learned the cue
    assert _head_accuracy(m_harm, c_harm, target) < acc_rel - 0.15
    # and the related source's features separate the target's classes better than a distractor's
    assert _ncm_accuracy(m_rel, target) > _ncm_accuracy(m_unrel, target) + 0.1
