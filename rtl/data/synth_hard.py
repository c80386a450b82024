"""A harder synthetic family for source ranking (`rtl synth OUT --size hard`): >= 20 sources, 8 targets.

Why another family: on the demo family (rtl.data.synth) every target's related sources are simply the
ones of its industry, and every source helps some target. A ranking that must also say "nothing helps"
(issue 9; the null case Ngiam et al. 2018's importance mass cannot express) needs ground truth with
related, harmful and unrelated sources per target, imaging shifts between related ones, and targets
with no related source at all.

The family is built from *worlds*. A world = one busy background surface (weave, grain, grid, ...) with
its palette, plus one *defect group*: three small, low-contrast defect shapes drawn by one generator
with fixed parameters (size, stroke, ink, opacity), on top of dust specks every class has. An image of
class `ok` has no defect, an image of class c has one defect of shape c at a random place, angle and
+-15 % size. Per target (one world, 3-4 classes, ~8-15 train images per class, 8 val / 8 test):

- related: sources of the same world with the same class names (same generator, same parameters, only
  a small per-dataset jitter of palette, texture period and noise), so what a model learns on them is
  exactly what the target needs. Some are *shifted*: a gray scan of a colour world (or the reverse), or
  the same world at another magnification (scale 1.5 or 0.75);
- harmful: sources of the same world and class names where the label follows a *shortcut* (a global
  colour/brightness cast or a high-contrast stamp) and the defect shape is drawn independently of the
  label, so a model trained on them learns the cue and to ignore the defect shapes; the cue never
  occurs in the target (shortcut learning, Geirhos et al. 2020, "Shortcut learning in deep neural
  networks");
- unrelated: every other source, including "same background, other defects" look-alikes. Defect names
  recur across worlds (ring, cross, crescent, ...) with other parameters and backgrounds, as "scratch"
  does across industries, so matching class names alone is not enough.

Two targets (marble, hatch) have no related source; one of them has a harmful look-alike.
Ground truth is written to OUT/relations.json:
`{target: {"related": [...], "harmful": [...], "unrelated": [...], "shifted": [...], "reason": str}}`,
every source listed exactly once across related / harmful / unrelated; `shifted` is a subset of related.

Everything is drawn in a 64-px reference frame scaled with the image side, so after resizing to the
corpus' 32-40 px every image shows the same content. Every image comes from its own
`np.random.default_rng([seed, dataset, class, index])` (as in rtl.data.synth): same seed -> same bytes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rtl.data.convention import (
    SPLITS,
    ImageRecord,
    make_splits,
    write_dataset_yaml,
    write_labels_csv,
    write_splits,
)
from rtl.data.synth import _dataset_rng
from rtl.errors import RtlError

REF = 64.0  # reference image side: sizes below are in pixels of a 64-px image


@dataclass(frozen=True)
class World:
    surface: str                    # background generator (SURFACES key); also the domain tag
    period: float                   # texture period, ref px
    angle: float                    # texture orientation, radians
    dark: tuple[int, int, int]      # palette: texture value 0 -> dark, 1 -> light
    light: tuple[int, int, int]
    ink: tuple[int, int, int]       # defect colour
    defects: tuple[str, str, str]   # defect shapes (PRIMS keys) = defect class names
    size: float                     # defect size, ref px
    thick: float                    # stroke width, ref px
    alpha: float                    # defect opacity: < 1 keeps defects subtle on the busy background
    gray: bool                      # native imaging: gray scan


@dataclass(frozen=True)
class HardSpec:
    name: str
    world: str                      # background world
    group: str = ""                 # world whose defect group is drawn ("" = same as background)
    gray: bool | None = None        # None = the world's native imaging
    scale: float = 1.0              # magnification vs the target (a shifted source when != 1)
    cue: str = ""                   # "" | "tint" | "stamp": harmful shortcut source
    fmt: str = "png"
    target: bool = False
    classes: tuple[str, ...] = ()   # targets: their classes (sources: ok + the 3 defects)
    train: int = 10                 # targets: train images per class (val and test: 8)


WORLDS: dict[str, World] = {
    "weave": World("weave", 7.0, 0.0, (70, 60, 45), (205, 185, 150), (45, 35, 110),
                   ("ring", "bar", "dots2"), 15.0, 3.2, 0.7, False),
    "grain": World("grain", 9.0, 0.0, (60, 70, 80), (190, 195, 205), (245, 240, 215),
                   ("cross", "arc", "box"), 15.0, 3.2, 0.85, True),
    "grid": World("grid", 8.0, 0.0, (30, 100, 50), (200, 160, 80), (235, 235, 225),
                  ("plus", "crescent", "chevron"), 15.0, 3.2, 0.65, False),
    "stripes": World("stripes", 6.0, 0.6, (120, 40, 40), (230, 170, 140), (30, 60, 60),
                     ("square", "zigzag", "disc"), 15.0, 3.2, 0.65, False),
    "rings": World("rings", 7.0, 0.0, (70, 50, 35), (200, 160, 110), (20, 15, 10),
                   ("triangle", "tee", "dots3"), 16.0, 3.2, 0.6, True),
    "dots": World("dots", 8.0, 0.3, (30, 40, 90), (120, 140, 200), (250, 225, 70),
                  ("ell", "ring", "cross"), 14.0, 3.0, 0.7, False),
    "marble": World("marble", 14.0, 0.8, (110, 105, 100), (235, 230, 220), (120, 40, 30),
                    ("bar", "square", "crescent"), 15.0, 3.2, 0.6, False),
    "hatch": World("hatch", 6.0, 0.0, (60, 60, 70), (200, 200, 190), (10, 10, 10),
                   ("chevron", "disc", "plus"), 15.0, 3.2, 0.65, True),
    "cells": World("cells", 10.0, 0.2, (40, 40, 60), (150, 170, 210), (220, 100, 30),
                   ("zigzag", "box", "arc"), 15.0, 3.2, 0.7, False),
    "brushed": World("brushed", 8.0, 0.0, (90, 90, 95), (210, 210, 215), (30, 30, 35),
                     ("dots2", "triangle", "tee"), 15.0, 3.2, 0.65, True),
    "bricks": World("bricks", 9.0, 0.0, (90, 40, 30), (200, 110, 80), (230, 230, 230),
                    ("crescent", "ell", "dots3"), 15.0, 3.2, 0.7, False),
}


def _specs() -> list[HardSpec]:
    S = HardSpec
    src = [
        S("weave_a", "weave"), S("weave_b", "weave", fmt="jpg"), S("weave_c", "weave", gray=True),
        S("grain_a", "grain"), S("grain_b", "grain", gray=False), S("grain_c", "grain", cue="stamp"),
        S("grid_a", "grid", scale=1.5), S("grid_b", "grid", cue="stamp"), S("grid_c", "grid", cue="tint"),
        S("stripes_a", "stripes"), S("stripes_b", "stripes", fmt="jpg"), S("stripes_c", "stripes", group="cells"),
        S("rings_a", "rings"), S("rings_b", "rings", cue="tint"),
        S("dots_a", "dots"), S("dots_b", "dots", scale=0.75), S("dots_c", "dots", gray=True),
        S("marble_a", "marble", cue="tint"),
        S("hatch_a", "hatch", group="bricks"),
        S("cells_a", "cells"), S("brushed_a", "brushed"), S("bricks_a", "bricks", fmt="jpg"),
    ]
    w = WORLDS
    tgt = [
        S("target_weave", "weave", target=True, classes=("ok",) + w["weave"].defects, train=10),
        S("target_grain", "grain", target=True, classes=("ok",) + w["grain"].defects[:2], train=12),
        S("target_grid", "grid", target=True, classes=("ok",) + w["grid"].defects, train=8),
        S("target_stripes", "stripes", target=True, classes=w["stripes"].defects, train=10),
        S("target_rings", "rings", target=True, classes=("ok",) + w["rings"].defects[:2], train=15),
        S("target_dots", "dots", target=True, classes=("ok",) + w["dots"].defects, train=10),
        S("target_marble", "marble", target=True, classes=("ok",) + w["marble"].defects, train=10),
        S("target_hatch", "hatch", target=True, classes=("ok",) + w["hatch"].defects[:2], train=12),
    ]
    return src + tgt


# ----------------------------------------------------------------------------------------- surfaces
# Each returns the texture value (H, W) float32 in ~[0, 1]; p = period in px, a = orientation.


def _frame(h: int, w: int, p: float, a: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x += rng.uniform(0, 8 * p)
    y += rng.uniform(0, 8 * p)
    c, s = np.float32(np.cos(a)), np.float32(np.sin(a))
    return x * c + y * s, -x * s + y * c  # (H, W) each


def _smooth(h: int, w: int, cy: float, cx: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise (H, W), std ~1, correlation length ~cy x cx px (bicubic upsampling of white noise)."""
    cy, cx = max(1.0, cy), max(1.0, cx)
    gh, gw = int(h / cy) + 4, int(w / cx) + 4
    n = rng.standard_normal((gh, gw)).astype(np.float32)
    big = np.asarray(Image.fromarray(n).resize((int(gw * cx), int(gh * cy)), Image.BICUBIC))
    oy, ox = int(rng.integers(0, int(cy) + 1)), int(rng.integers(0, int(cx) + 1))
    return big[oy:oy + h, ox:ox + w]


def _weave(h, w, p, a, rng):
    u, v = _frame(h, w, p, a, rng)
    par = (np.floor(u / p) + np.floor(v / p)) % 2
    thread = np.where(par > 0, np.sin(np.pi * ((v / p) % 1)), np.sin(np.pi * ((u / p) % 1)))
    return 0.1 + 0.75 * thread ** 0.7 + 0.05 * _smooth(h, w, p / 2, p / 2, rng)


def _grain(h, w, p, a, rng):
    return 0.45 + 0.14 * _smooth(h, w, p, p, rng) + 0.07 * _smooth(h, w, p / 3, p / 3, rng)


def _grid(h, w, p, a, rng):
    u, v = _frame(h, w, p, a, rng)
    lines = ((u % p) < p / 4) | ((v % (2 * p)) < p / 4)
    pads = ((u % (2 * p)) < p / 2) & ((v % (2 * p)) < p / 2)
    return np.where(lines | pads, 0.9, 0.15) + 0.05 * _smooth(h, w, p, p, rng)


def _stripes(h, w, p, a, rng):
    u, _ = _frame(h, w, p, a, rng)
    return 0.5 + 0.35 * np.sin(2 * np.pi * u / p + 1.2 * _smooth(h, w, 3 * p, 3 * p, rng))


def _rings(h, w, p, a, rng):
    cy, cx = rng.uniform(-2 * h, 3 * h), rng.uniform(-2 * w, -w)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(y - cy, x - cx)
    return 0.5 + 0.35 * np.sin(2 * np.pi * r / p + 0.8 * _smooth(h, w, 2 * p, 2 * p, rng))


def _dots(h, w, p, a, rng):
    u, v = _frame(h, w, p, a, rng)
    row = np.floor(v / (0.866 * p))
    du = (u + (row % 2) * p / 2) % p - p / 2
    dv = v % (0.866 * p) - 0.433 * p
    d = np.hypot(du, dv)
    return 0.2 + 0.65 * np.clip(0.3 * p - d + 0.5, 0, 1) + 0.05 * _smooth(h, w, p, p, rng)


def _marble(h, w, p, a, rng):
    u, _ = _frame(h, w, p, a, rng)
    return 0.55 + 0.35 * np.sin(2 * np.pi * u / p + 4.0 * _smooth(h, w, 2 * p, 2 * p, rng)) ** 3


def _hatch(h, w, p, a, rng):
    u, v = _frame(h, w, p, a, rng)
    m = (((u + v) / p) % 1 < 0.25) | (((u - v) / p) % 1 < 0.25)
    return np.where(m, 0.85, 0.3) + 0.06 * _smooth(h, w, p / 2, p / 2, rng)


def _cells(h, w, p, a, rng):
    u, v = _frame(h, w, p, a, rng)
    iu, iv = np.floor(u / p).astype(np.int64), np.floor(v / p).astype(np.int64)
    iu -= iu.min()
    iv -= iv.min()
    lev = rng.uniform(0.35, 0.95, (int(iv.max()) + 1, int(iu.max()) + 1)).astype(np.float32)
    gap = ((u % p) < p / 8) | ((v % p) < p / 8)
    return np.where(gap, 0.05, lev[iv, iu])


def _brushed(h, w, p, a, rng):
    return 0.5 + 0.25 * _smooth(h, w, p / 4, 6 * p, rng) + 0.08 * _smooth(h, w, p, p, rng)


def _bricks(h, w, p, a, rng):
    u, v = _frame(h, w, p, a, rng)
    row = np.floor(v / p)
    mort = ((v % p) < p / 6) | (((u + (row % 2) * p) % (2 * p)) < p / 6)
    return np.where(mort, 0.9, 0.35) + 0.1 * _smooth(h, w, p / 2, p / 2, rng)


SURFACES: dict[str, Callable[..., np.ndarray]] = {
    "weave": _weave, "grain": _grain, "grid": _grid, "stripes": _stripes, "rings": _rings, "dots": _dots,
    "marble": _marble, "hatch": _hatch, "cells": _cells, "brushed": _brushed, "bricks": _bricks,
}


# ------------------------------------------------------------------------------------------ defects
# Signed distance (px, negative inside) of each shape in its local frame (u, v); s = size, t = stroke.


def _seg(u, v, ax, ay, bx, by):
    pu, pv, du, dv = u - ax, v - ay, bx - ax, by - ay
    k = np.clip((pu * du + pv * dv) / (du * du + dv * dv), 0, 1)
    return np.hypot(pu - du * k, pv - dv * k)


def _poly(u, v, pts):
    return np.minimum.reduce([_seg(u, v, *pts[i], *pts[i + 1]) for i in range(len(pts) - 1)])


def _arc(u, v, s, t):
    r = s / 2
    return np.where(v < 0, np.abs(np.hypot(u, v) - r), np.minimum(np.hypot(u - r, v), np.hypot(u + r, v))) - t / 2


def _triangle(u, v, s, t):
    r = s / 2
    pts = [(r * np.cos(a), r * np.sin(a)) for a in np.pi / 2 + np.arange(4) * 2 * np.pi / 3]
    return _poly(u, v, pts) - t / 2


PRIMS: dict[str, Callable[..., np.ndarray]] = {
    "disc": lambda u, v, s, t: np.hypot(u, v) - 0.3 * s,
    "ring": lambda u, v, s, t: np.abs(np.hypot(u, v) - s / 2) - t / 2,
    "bar": lambda u, v, s, t: _seg(u, v, -s / 2, 0, s / 2, 0) - t / 2,
    "cross": lambda u, v, s, t: np.minimum(_seg(u, v, -s / 2.8, -s / 2.8, s / 2.8, s / 2.8),
                                           _seg(u, v, -s / 2.8, s / 2.8, s / 2.8, -s / 2.8)) - t / 2,
    "plus": lambda u, v, s, t: np.minimum(_seg(u, v, -s / 2, 0, s / 2, 0), _seg(u, v, 0, -s / 2, 0, s / 2)) - t / 2,
    "square": lambda u, v, s, t: np.abs(np.maximum(np.abs(u), np.abs(v)) - 0.4 * s) - t / 2,
    "box": lambda u, v, s, t: np.maximum(np.abs(u), np.abs(v)) - 0.28 * s,
    "triangle": _triangle,
    "arc": _arc,
    "chevron": lambda u, v, s, t: _poly(u, v, [(-s / 2, -s / 3), (0, s / 3), (s / 2, -s / 3)]) - t / 2,
    "dots2": lambda u, v, s, t: np.minimum(np.hypot(u - s / 3, v), np.hypot(u + s / 3, v)) - 0.9 * t,
    "dots3": lambda u, v, s, t: np.minimum.reduce(
        [np.hypot(u - s / 3 * np.cos(a), v - s / 3 * np.sin(a)) for a in (0.0, 2.094, 4.189)]) - 0.9 * t,
    "zigzag": lambda u, v, s, t: _poly(u, v, [(-s / 2, -s / 5), (-s / 6, s / 5), (s / 6, -s / 5), (s / 2, s / 5)]) - t / 2,
    "tee": lambda u, v, s, t: np.minimum(_seg(u, v, -s / 2, -s / 2, s / 2, -s / 2), _seg(u, v, 0, -s / 2, 0, s / 2)) - t / 2,
    "ell": lambda u, v, s, t: np.minimum(_seg(u, v, -s / 2, -s / 2, -s / 2, s / 2), _seg(u, v, -s / 2, s / 2, s / 2, s / 2)) - t / 2,
    "crescent": lambda u, v, s, t: np.maximum(np.hypot(u, v) - 0.42 * s, 0.34 * s - np.hypot(u - 0.22 * s, v)),
}


def _stamp(img: np.ndarray, shape: str, cx: float, cy: float, s: float, t: float, ang: float,
           colour: np.ndarray, alpha: float) -> None:
    """Blend one anti-aliased shape into img (H, W, 3) float32 in place (only a window around it)."""
    h, w = img.shape[:2]
    r = int(np.ceil(s + t + 2))
    y0, y1, x0, x1 = max(0, int(cy) - r), min(h, int(cy) + r + 1), max(0, int(cx) - r), min(w, int(cx) + r + 1)
    if y1 <= y0 or x1 <= x0:
        return
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    c, sn = np.cos(ang), np.sin(ang)
    u, v = (x - cx) * c + (y - cy) * sn, -(x - cx) * sn + (y - cy) * c
    m = np.clip(0.5 - PRIMS[shape](u, v, s, t) / 0.8, 0, 1)[..., None] * alpha  # (h', w', 1)
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - m) + colour * m


# ------------------------------------------------------------------------------------------- images
CUE_TINT = np.array([[1.0, 1.0, 1.0], [1.25, 0.95, 0.8], [0.8, 1.2, 0.9], [0.85, 0.9, 1.3]], np.float32)
CUE_GRAY = np.array([1.0, 0.7, 1.3, 0.45], np.float32)  # gray scans: brightness cast per class
CUE_STAMP = np.array([0, 255, 90, 180], np.float32)      # stamp intensity per class


def _render(bg: World, grp: World, h: int, w: int, scale: float, defect: str | None, cue: str, k: int,
            gray: bool, jit: dict, rng: np.random.Generator) -> np.ndarray:
    """One image (H, W, 3) uint8. `defect`: shape to draw or None; cue k: class index of a shortcut."""
    u = min(h, w) / REF * scale  # px per reference px
    t = SURFACES[bg.surface](h, w, bg.period * u * jit["period"], bg.angle + jit["angle"], rng)
    dark, light = np.array(bg.dark, np.float32) * jit["tint"], np.array(bg.light, np.float32) * jit["tint"]
    img = dark + (light - dark) * np.clip(t, 0, 1.2)[..., None]  # (H, W, 3)
    img = img * np.float32(rng.uniform(0.9, 1.1))  # exposure jitter: intensity alone does not tell the class
    for _ in range(int(rng.integers(0, 4))):  # dust specks: every class has them
        _stamp(img, "disc", rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2.0, 4.0) * u, 0, 0.0,
               dark * 0.5, float(rng.uniform(0.4, 0.8)))
    if defect is not None:
        s = grp.size * u * rng.uniform(0.85, 1.15)
        mg = min(s * 0.6, min(h, w) / 2 - 1)
        _stamp(img, defect, rng.uniform(mg, w - mg), rng.uniform(mg, h - mg), s, grp.thick * u,
               rng.uniform(0, 2 * np.pi), np.array(grp.ink, np.float32), grp.alpha)
    if cue == "tint":
        img = img * (CUE_GRAY[k] if gray else CUE_TINT[k])
    elif cue == "stamp":
        sd = 6 * u
        _stamp(img, "box", rng.uniform(sd, w - sd), rng.uniform(sd, h - sd), sd / 0.56, 0, 0.0,
               np.full(3, CUE_STAMP[k], np.float32), 1.0)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * jit["noise"]
    return np.clip(img, 0, 255).astype(np.uint8)


def _jitter(name: str, seed: int) -> dict:
    """Per-dataset imaging jitter (palette, texture period/angle, noise); defect parameters never jitter."""
    r = _dataset_rng(seed, "hard-var", name)
    return {"tint": r.uniform(0.92, 1.08, 3).astype(np.float32), "period": float(r.uniform(0.95, 1.05)),
            "angle": float(r.uniform(-0.1, 0.1)), "noise": float(r.uniform(3.0, 7.0))}


def generate_dataset(spec: HardSpec, root: Path, seed: int) -> dict:
    """Write one dataset folder of the hard family; returns its summary row (as rtl.data.synth's)."""
    if root.exists():
        shutil.rmtree(root)
    (root / "images").mkdir(parents=True)
    bg, grp = WORLDS[spec.world], WORLDS[spec.group or spec.world]
    gray = bg.gray if spec.gray is None else spec.gray
    jit = _jitter(spec.name, seed)
    classes = spec.classes or ("ok",) + grp.defects
    dr = _dataset_rng(seed, "hard-plan", spec.name)
    if spec.target:
        plan = {c: spec.train + 16 for c in classes}
        lo, hi = 48, 80
    else:
        plan = {c: int(dr.integers(40, 81)) for c in classes}
        lo, hi = 48, 96
    records: list[ImageRecord] = []
    sides: list[int] = []
    for k, label in enumerate(classes):
        for i in range(plan[label]):
            rng = _dataset_rng(seed, spec.name, label, i)
            side = int(np.exp(rng.uniform(np.log(lo), np.log(hi + 1))))
            aspect = rng.uniform(0.8, 1.25)
            h, w = (side, int(side * aspect)) if aspect < 1 else (int(side / aspect), side)
            if spec.cue:  # shortcut: the label follows the cue, the defect is drawn regardless of it
                j = int(rng.integers(0, 4))
                defect = None if j == 0 else grp.defects[j - 1]
            else:
                defect = None if label == "ok" else label
            arr = _render(bg, grp, h, w, spec.scale, defect, spec.cue, k, gray, jit, rng)
            im = Image.fromarray(arr).convert("L") if gray else Image.fromarray(arr)
            rel = f"images/{label}/{label}_{i:05d}.{spec.fmt}"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if spec.fmt == "jpg":
                im.save(path, format="JPEG", quality=92)
            else:
                im.save(path, format="PNG", compress_level=1)
            records.append(ImageRecord(rel, label, ""))
            sides.append(max(h, w))
    if spec.target:
        tr = spec.train
        records = [ImageRecord(r.path, r.label, "train" if i < tr else "val" if i < tr + 8 else "test")
                   for c in classes for i, r in enumerate(x for x in records if x.label == c)]
    else:
        records = make_splits(records, seed=seed)
    kind = "target" if spec.target else "source"
    write_dataset_yaml(root, name=spec.name, domain=[bg.surface],
                       description=f"synthetic {bg.surface} inspection {kind} dataset (rtl synth --size hard)",
                       license="CC0-1.0 (procedurally generated)")
    write_labels_csv(root, records)
    write_splits(root, records)
    counts = {c: {s: sum(1 for r in records if r.label == c and r.split == s) for s in SPLITS} for c in classes}
    return {"name": spec.name, "kind": kind, "industry": bg.surface, "mode": "L" if gray else "RGB",
            "format": spec.fmt, "classes": counts, "images": len(records),
            "min_side": min(sides), "max_side": max(sides)}


# ----------------------------------------------------------------------------------------- relations


def _imaging(spec: HardSpec) -> str:
    bg = WORLDS[spec.world]
    parts = []
    if spec.gray is not None and spec.gray != bg.gray:
        parts.append("gray scan" if spec.gray else "colour scan")
    if spec.scale != 1.0:
        parts.append(f"scale x{spec.scale:g}")
    return ", ".join(parts)


def relations(specs: list[HardSpec] | None = None) -> dict[str, dict]:
    """Ground truth per target: related / harmful / unrelated (a partition of the sources), shifted ⊆ related."""
    specs = _specs() if specs is None else specs
    sources = sorted((s for s in specs if not s.target), key=lambda s: s.name)
    out: dict[str, dict] = {}
    for t in (s for s in specs if s.target):
        rel, harm, unrel, shifted, why = [], [], [], [], []
        for s in sources:
            same = s.world == t.world and (s.group or s.world) == t.world
            if same and not s.cue:
                rel.append(s.name)
                if _imaging(s):
                    shifted.append(s.name)
                    why.append(f"{s.name} related, shifted ({_imaging(s)})")
                else:
                    why.append(f"{s.name} related")
            elif same:
                harm.append(s.name)
                why.append(f"{s.name} harmful (shortcut: label follows a {s.cue}, defects drawn regardless)")
            else:
                unrel.append(s.name)
                if s.world == t.world:
                    why.append(f"{s.name} unrelated look-alike (same {t.world} background, "
                               f"{s.group} defects)")
        if not rel:
            why.insert(0, "no related source")
        out[t.name] = {"related": rel, "harmful": harm, "unrelated": unrel, "shifted": shifted,
                       "reason": "; ".join(why)}
    return out


def generate_hard_family(out: Path, *, seed: int = 0) -> dict:
    """Write out/sources/*, out/targets/* and out/relations.json; same return shape as synth.generate_family."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RtlError(f"{out}: exists and is not a folder")
    t0 = time.perf_counter()
    specs = _specs()
    rows = [generate_dataset(s, out / ("targets" if s.target else "sources") / s.name, seed) for s in specs]
    rows.sort(key=lambda r: r["name"])
    rel = relations(specs)
    (out / "relations.json").write_text(json.dumps(rel, indent=2, sort_keys=True) + "\n")
    return {"sources": [r for r in rows if r["kind"] == "source"],
            "targets": [r for r in rows if r["kind"] == "target"],
            "relations": rel, "seconds": round(time.perf_counter() - t0, 2)}
