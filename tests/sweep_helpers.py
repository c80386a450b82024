"""Tiny sweep fixtures shared by the sweep tests: a 2-dataset corpus (32-40 px) and a 3-class target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

SIDE = 32
COLS = ("pixels", "height", "width", "channels", "class_id", "dataset", "label", "source_path", "patch", "split")


def write_corpus(root: Path, per_class: int = 8) -> Path:
    """2 datasets x 2 classes; class c has a bright square in quadrant c (learnable in an epoch)."""
    rng = np.random.default_rng(0)
    classes = [{"id": i, "dataset": ds, "label": lb, "domain": [dom]}
               for i, (ds, lb, dom) in enumerate([("a", "ok", "pcb"), ("a", "bad", "pcb"),
                                                  ("b", "ok", "metal"), ("b", "bad", "metal")])]
    cols: dict[str, list] = {k: [] for k in COLS}
    for c in classes:
        for j in range(per_class):
            h, w = int(rng.integers(SIDE, SIDE + 9)), int(rng.integers(SIDE, SIDE + 9))
            img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
            y0, x0 = (c["id"] // 2) * (h // 2), (c["id"] % 2) * (w // 2)
            img[y0: y0 + h // 2, x0: x0 + w // 2] += 180
            for k, v in zip(COLS, (img.tobytes(), h, w, 3, c["id"], c["dataset"], c["label"],
                                   f"images/{c['label']}/{j:03d}.png", 0, "train")):
                cols[k].append(v)
    types = [pa.binary(), pa.int32(), pa.int32(), pa.int32(), pa.int32(), pa.string(), pa.string(), pa.string(),
             pa.int32(), pa.string()]
    table = pa.table(cols, schema=pa.schema(list(zip(COLS, types))))
    (root / "shards").mkdir(parents=True)
    pq.write_table(table, root / "shards/part-00000.parquet")
    manifest = {"version": "sweeptest0000001", "params": {"min_side": SIDE, "max_side": SIDE + 8, "seed": 0},
                "datasets": {"a": {"domain": ["pcb"], "root": "/x/a"}, "b": {"domain": ["metal"], "root": "/x/b"}},
                "classes": classes, "shards": ["shards/part-00000.parquet"]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def write_target(root: Path, name: str = "tgt", per_split: tuple[int, int, int] = (4, 2, 2)) -> Path:
    """A 2-class target dataset in the convention (quadrant squares like the corpus)."""
    rng = np.random.default_rng(1)
    rows, splits = [], {"train": [], "val": [], "test": []}
    for ci, label in enumerate(["ok", "bad"]):
        (root / "images" / label).mkdir(parents=True, exist_ok=True)
        j = 0
        for split, n in zip(("train", "val", "test"), per_split):
            for _ in range(n):
                img = rng.integers(0, 60, size=(36, 36, 3), dtype=np.uint8)
                img[(ci // 2) * 18: (ci // 2) * 18 + 18, (ci % 2) * 18: (ci % 2) * 18 + 18] += 180
                rel = f"images/{label}/{j:03d}.png"
                Image.fromarray(img).save(root / rel)
                rows.append((rel, label))
                splits[split].append(rel)
                j += 1
    (root / "dataset.yaml").write_text(yaml.safe_dump({"name": name, "domain": ["pcb"], "description": "t",
                                                       "license": "test"}))
    (root / "labels.csv").write_text("image,label\n" + "".join(f"{r},{lb}\n" for r, lb in rows))
    (root / "ImageSets/Main").mkdir(parents=True)
    for s, items in splits.items():
        (root / f"ImageSets/Main/{s}.txt").write_text("".join(f"{r}\n" for r in items))
    return root


def write_spec(ws: Path, *, name: str = "t", trials: int = 4, targets: tuple[str, ...] = ("tgt",),
               **over) -> Path:
    """Workspace with corpus + targets and a tiny spec file; returns the spec path."""
    if not (ws / "corpus").exists():
        write_corpus(ws / "corpus")
    for t in targets:
        if not (ws / "targets" / t).exists():
            write_target(ws / "targets" / t, t)
    spec = {"name": name, "workspace": ".", "corpus": "corpus", "targets": [f"targets/{t}" for t in targets],
            "backbone": "small_cnn", "image": {"min_side": 32, "max_side": 40},
            "search": {"sources": {"space": "bits"},  # the wave-1 space; ranked sweeps set their own
                       "temperature": {"low": 0.5, "high": 4.0, "allow_off": True}, "lr": {"low": 0.01, "high": 0.1},
                       "freeze_depth": {"low": 0, "high": 1}},
            "budget": {"pretrain_epochs": 1, "finetune_epochs": 2, "trials_per_target": trials,
                       "max_concurrent": 1, "batch_size": 8},
            "resources": {"cpus": 1}, "scheduler": {"grace_period": 1, "reduction_factor": 2},
            "searcher": {"n_startup_trials": 2}, "seeds": [0],
            "controls": {"scratch": True, "uniform": True, "importance": False, "imagenet": False}}
    for k, v in over.items():
        spec[k] = v
    path = ws / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
