"""A procedurally generated family of visual-inspection datasets (no download): the demo and test data.

Six industries each get their own surface (pcb traces, film grain, display pixel grid, solar cells with
busbars, wafer dies, bottles), several source datasets per industry with per-dataset colour / scale /
noise, an `ok` class and 2-4 defect classes. Defect types are partly shared across industries (scratch,
spot, crack, bubble, stain, chip) and partly specific (short/open on pcb, dead_pixel on display); each has
a distinctive drawn shape. Held-out targets are small datasets of one industry whose classes are shared
with that industry's sources; `relations.json` records which sources are related (the ground truth a
source-selection method should recover, as in Ngiam et al. 2018, "Domain Adaptive Transfer Learning").

Images span ~100-2000 px (a few >= 1500 px with small defects boxed in VOC Annotations), film and
semiconductor are grayscale, class sizes range from < 10 to thousands (size="full"). Every image comes from
its own `np.random.default_rng([seed, dataset, class, index])`, so output bytes do not depend on
worker scheduling: same seed -> identical files.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rtl.data.convention import (
    SPLITS,
    Box,
    ImageRecord,
    annotation_path,
    make_splits,
    write_dataset_yaml,
    write_labels_csv,
    write_splits,
    write_voc_xml,
)
from rtl.data.safety import claim_destination
from rtl.errors import RtlError

INDUSTRY_MODE = {"pcb": "RGB", "film": "L", "display": "RGB", "solar": "RGB", "semiconductor": "L",
                 "beverage": "RGB"}


@dataclass(frozen=True)
class Spec:
    name: str
    industry: str
    counts: dict[str, int]  # demo-scale counts; classes with < 10 stay small at every size
    sizes: tuple[int, int] = (128, 320)  # demo/full image side range
    large: bool = False  # a few images >= 1500 px with small boxed defects
    fmt: str = "png"
    target: bool = False
    split_counts: tuple[int, int, int] = (0, 0, 0)  # targets: per-class train/val/test at demo scale
    related: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)


def _specs() -> list[Spec]:
    S = Spec
    src = [
        S("pcb_a", "pcb", {"ok": 300, "short": 120, "open": 60, "scratch": 25}),
        S("pcb_b", "pcb", {"ok": 160, "short": 40, "open": 80, "spot": 30, "scratch": 8}, (200, 480), True),
        S("film_a", "film", {"ok": 250, "scratch": 90, "bubble": 50, "spot": 9}, (96, 256)),
        S("film_b", "film", {"ok": 140, "bubble": 70, "stain": 30}, (300, 600)),
        S("display_a", "display", {"ok": 220, "dead_pixel": 100, "scratch": 40, "spot": 20}, (100, 200)),
        S("display_b", "display", {"ok": 120, "dead_pixel": 45, "spot": 7}, (256, 512), fmt="jpg"),
        S("solar_a", "solar", {"ok": 260, "crack": 110, "spot": 35, "scratch": 15}, (160, 400), True),
        S("solar_b", "solar", {"ok": 130, "crack": 50, "scratch": 20}, (200, 300)),
        S("semiconductor_a", "semiconductor", {"ok": 240, "scratch": 60, "spot": 45, "chip": 20},
          (128, 256), True),
        S("semiconductor_b", "semiconductor", {"ok": 110, "chip": 40, "crack": 6}, (96, 160)),
        S("beverage_a", "beverage", {"ok": 200, "bubble": 60, "chip": 30, "crack": 12}, (150, 300)),
        S("beverage_b", "beverage", {"ok": 100, "bubble": 35, "stain": 25}, (200, 400), fmt="jpg"),
    ]
    tgt = [
        S("target_pcb", "pcb", {"ok": 0, "short": 0, "open": 0}, (128, 256), target=True,
          split_counts=(15, 10, 20), related=("pcb_a", "pcb_b")),
        S("target_film", "film", {"ok": 0, "bubble": 0, "scratch": 0}, (128, 320), target=True,
          split_counts=(15, 10, 20), related=("film_a", "film_b")),
        S("target_solar", "solar", {"ok": 0, "crack": 0, "spot": 0}, (160, 320), target=True,
          split_counts=(12, 10, 20), related=("solar_a", "solar_b")),
        S("target_display", "display", {"ok": 0, "dead_pixel": 0, "scratch": 0}, (128, 256), target=True,
          split_counts=(20, 10, 20), related=("display_a", "display_b")),
    ]
    return src + tgt


# ----------------------------------------------------------------------------------------- surfaces
# Each returns (H, W, 3) float32 and a geometry dict used by industry-specific defects.


def _lines(n: int, pitch: float, width: float, off: float) -> np.ndarray:
    return ((np.arange(n, dtype=np.float32) + off) % pitch) < width


def _pcb(h, w, u, v, rng):
    p = max(4.0, 14 * u * v["pitch"])
    tw = max(1.0, p / 4)
    off = rng.uniform(0, p)
    board = np.array([35, 115, 55], np.float32) * v["tint"]
    copper = np.array([195, 145, 70], np.float32) * v["tint2"]
    hor = _lines(h, p, tw, off)[:, None]
    ver = _lines(w, 3 * p, tw, rng.uniform(0, 3 * p))[None, :] & _lines(h, 5 * p, 3 * p, off)[:, None]
    pads = _lines(h, p, 2.2 * tw, off + 0.6 * tw)[:, None] & _lines(w, 2 * p, 2.2 * tw, 0)[None, :]
    m = (hor | ver | pads)[..., None]
    img = np.where(m, copper, board).astype(np.float32)
    return img, {"pitch": p, "tw": tw, "off": off, "board": board, "copper": copper}


def _film(h, w, u, v, rng):
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    a, b, c = rng.uniform(-50, 50, 3)
    g = 140 * v["bright"] + a * x + b * y + 12 * np.sin(2 * np.pi * (c / 50 + x * 0.7 + y * 0.4))
    img = g[..., None] * (v["tint"] / v["tint"].mean())
    grain = rng.standard_normal((h, w), dtype=np.float32) * 6 * v["noise"]
    return (img + grain[..., None]).astype(np.float32), {}


def _display(h, w, u, v, rng):
    p = max(3, int(round(6 * u * v["pitch"])))
    xm = np.arange(w) % p
    stripe = np.eye(3, dtype=np.float32)[np.minimum(xm * 3 // p, 2)]  # (W, 3) one-hot sub-pixel
    level = rng.uniform(120, 200) * v["bright"] * v["tint"]
    row = level * (0.25 + 0.75 * stripe)  # (W, 3)
    row[xm == p - 1] = 15
    img = np.repeat(row[None], h, 0)
    img[(np.arange(h) % p) == p - 1] = 15
    return img, {"pitch": p}


def _solar(h, w, u, v, rng):
    cs = max(12.0, 60 * u * v["pitch"])
    g = max(1.0, cs / 20)
    blue = np.array([25, 45, 120], np.float32) * v["tint"]
    silver = np.array([200, 200, 210], np.float32)
    ny, nx = int(h // cs) + 2, int(w // cs) + 2
    cell_b = rng.uniform(0.85, 1.15, (ny, nx)).astype(np.float32)
    oy, ox = rng.uniform(0, cs, 2)
    iy = ((np.arange(h) + oy) // cs).astype(int)
    ix = ((np.arange(w) + ox) // cs).astype(int)
    img = blue * cell_b[iy][:, ix][..., None]
    fing = _lines(h, cs / 8, max(1.0, cs / 80), oy)[:, None]
    img = img + 18 * fing[..., None]
    bus = (_lines(w, cs, max(1.0, cs / 30), ox - cs / 3) | _lines(w, cs, max(1.0, cs / 30), ox - 2 * cs / 3))
    gaps = _lines(h, cs, g, oy)[:, None] | _lines(w, cs, g, ox)[None, :]
    img = np.where((gaps | bus[None, :])[..., None], silver, img)
    return img.astype(np.float32), {}


def _semi(h, w, u, v, rng):
    dw = max(10.0, 34 * u * v["pitch"])
    dh = dw * v["extra"]
    st = max(1.0, dw / 12)
    oy, ox = rng.uniform(0, dh), rng.uniform(0, dw)
    yy = (np.arange(h) + oy) % dh
    xx = (np.arange(w) + ox) % dw
    street = (yy < st)[:, None] | (xx < st)[None, :]
    pads = ((yy > st + 1) & (yy < st + 1 + dh / 8))[:, None] & ((xx % (dw / 6)) < dw / 12)[None, :]
    core = ((yy > dh * 0.35) & (yy < dh * 0.85))[:, None] & ((xx > dw * 0.2) & (xx < dw * 0.85))[None, :]
    body = 140 * v["bright"]
    img = np.full((h, w), body, np.float32)
    img[core] = body * 0.8
    img[pads] = 205
    img[street] = 60
    return np.repeat(img[..., None], 3, 2) * (v["tint"] / v["tint"].mean()), {}


def _beverage(h, w, u, v, rng):
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    img = np.broadcast_to((225 - 25 * y)[..., None] * np.ones(3, np.float32), (h, w, 3)).copy()
    cx = 0.5 + rng.uniform(-0.05, 0.05)
    bw = 0.2 * v["pitch"]
    body = (np.abs(x - cx) < bw) & (y > 0.28) & (y < 0.97)
    neck = (np.abs(x - cx) < bw * 0.4) & (y > 0.1) & (y <= 0.3)
    cap = (np.abs(x - cx) < bw * 0.48) & (y > 0.03) & (y <= 0.11)
    glass = np.array([140, 90, 30], np.float32) * v["tint"]
    hl = np.exp(-(((x - cx + bw * 0.5) / (bw * 0.15)) ** 2))[..., None] * 70  # vertical highlight
    img = np.where((body | neck)[..., None], glass + hl, img)
    img = np.where(cap[..., None], np.array([180, 30, 30], np.float32) * v["tint2"], img)
    region = (int((cx - bw * 0.8) * w), int(0.35 * h), int((cx + bw * 0.8) * w), int(0.92 * h))
    return img.astype(np.float32), {"region": region}


SURFACES = {"pcb": _pcb, "film": _film, "display": _display, "solar": _solar, "semiconductor": _semi,
            "beverage": _beverage}


# ------------------------------------------------------------------------------------------ defects
# Each draws on `draw` at a centre (cx, cy) with scale d (px) and returns its bounding box (x0, y0, x1, y1).


def _bbox(pts, pad):
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs) - pad, min(ys) - pad, max(xs) + pad + 1, max(ys) + pad + 1


def _scratch(dr, cx, cy, d, m, g, rng):
    t, ln = rng.uniform(0, np.pi), d * rng.uniform(0.3, 0.6) / 2
    pts = [(cx - ln * np.cos(t), cy - ln * np.sin(t)), (cx + ln * np.cos(t), cy + ln * np.sin(t))]
    wd = max(1, round(d / 100))
    dr.line(pts, fill=tuple(int(min(255, c * 0.4 + 160)) for c in m), width=wd)
    return _bbox(pts, wd)


def _spot(dr, cx, cy, d, m, g, rng):
    r = max(2.0, d * rng.uniform(0.03, 0.07))
    rx, ry = r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2)
    dr.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=tuple(int(c * 0.2) for c in m))
    return cx - rx, cy - ry, cx + rx + 1, cy + ry + 1


def _crack(dr, cx, cy, d, m, g, rng):
    wd, col = max(1, round(d / 110)), tuple(int(c * 0.15) for c in m)
    t, step = rng.uniform(0, 2 * np.pi), d * 0.05
    pts = [(cx, cy)]
    for _ in range(12):
        t += rng.uniform(-0.7, 0.7)
        pts.append((pts[-1][0] + step * np.cos(t), pts[-1][1] + step * np.sin(t)))
    dr.line(pts, fill=col, width=wd)
    b = [pts[5]]
    tb = t + rng.choice([-1, 1]) * 1.0
    for _ in range(4):
        tb += rng.uniform(-0.5, 0.5)
        b.append((b[-1][0] + step * np.cos(tb), b[-1][1] + step * np.sin(tb)))
    dr.line(b, fill=col, width=wd)
    return _bbox(pts + b, wd)


def _bubble(dr, cx, cy, d, m, g, rng):
    boxes = []
    for k in range(int(rng.integers(1, 4))):
        r = max(3.0, d * rng.uniform(0.04, 0.09))
        x, y = cx + k * rng.uniform(-2, 2) * r, cy + k * rng.uniform(-2, 2) * r
        dr.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(min(255, c * 0.8 + 40)) for c in m),
                   outline=tuple(int(min(255, c * 0.3 + 190)) for c in m), width=max(1, round(r / 4)))
        boxes.append((x - r, y - r, x + r + 1, y + r + 1))
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def _chip(dr, cx, cy, d, m, g, rng):
    s, t = d * rng.uniform(0.08, 0.15), rng.uniform(0, 2 * np.pi)
    pts = [(cx, cy), (cx + s * np.cos(t), cy + s * np.sin(t)),
           (cx + s * np.cos(t + np.pi / 2), cy + s * np.sin(t + np.pi / 2))]
    dr.polygon(pts, fill=tuple(int(c * 0.1) for c in m))
    return _bbox(pts, 1)


def _stain(dr, cx, cy, d, m, g, rng):
    # a soft blob needs alpha: drawn on the numpy image afterwards (see _render); here only the box
    r = d * rng.uniform(0.12, 0.22)
    g["stains"].append((cx, cy, r, rng.uniform(0.45, 0.7)))
    return cx - r, cy - r, cx + r + 1, cy + r + 1


def _short(dr, cx, cy, d, m, g, rng):
    p, tw, off = g["pitch"], g["tw"], g["off"]
    y0 = np.floor((cy + off) / p) * p - off + tw / 2  # centre of a trace row
    wd = max(2.0, p / 2)  # a solder bridge: bright silver bar joining two neighbouring traces
    x0, x1, y1 = cx - wd / 2, cx + wd / 2, y0 + p * rng.uniform(1.0, 1.3)
    dr.rectangle([x0, y0, x1, y1], fill=(235, 235, 225))
    return x0, y0, x1 + 1, y1 + 1


def _open(dr, cx, cy, d, m, g, rng):
    p, tw, off = g["pitch"], g["tw"], g["off"]
    yt = np.floor((cy + off) / p) * p - off  # first row of a trace (pads reach 0.6 tw above, 1.6 tw below)
    y0, y1 = yt - 0.6 * tw - 1, yt + 1.6 * tw + 1
    gl = max(3.0, p * rng.uniform(0.9, 1.6))
    dr.rectangle([cx - gl / 2, y0, cx + gl / 2, y1], fill=tuple(int(c) for c in g["board"]))
    return cx - gl / 2, y0, cx + gl / 2 + 1, y1 + 1


def _dead_pixel(dr, cx, cy, d, m, g, rng):
    p = g["pitch"]
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(2, 4))
        x0 = (int(cx + rng.uniform(-3, 3) * p) // p) * p
        y0 = (int(cy + rng.uniform(-3, 3) * p) // p) * p
        fill = (0, 0, 0) if rng.random() < 0.6 else (255, 255, 255)
        dr.rectangle([x0, y0, x0 + k * p - 1, y0 + k * p - 1], fill=fill)
        boxes.append((x0, y0, x0 + k * p, y0 + k * p))
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


DEFECTS = {"scratch": _scratch, "spot": _spot, "crack": _crack, "bubble": _bubble, "chip": _chip,
           "stain": _stain, "short": _short, "open": _open, "dead_pixel": _dead_pixel}


def _render(industry: str, h: int, w: int, d: float, label: str, v: dict, rng: np.random.Generator):
    """One image: (H, W, 3) uint8 and its defect boxes. `d` = defect/pattern scale in px."""
    u = d / 128
    img, g = SURFACES[industry](h, w, u, v, rng)
    boxes: list[Box] = []
    if label != "ok":
        g["stains"] = []
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        dr = ImageDraw.Draw(pil)
        m = img.reshape(-1, 3).mean(0)
        x0r, y0r, x1r, y1r = g.get("region", (0, 0, w, h))
        mx, my = min(d * 0.25, (x1r - x0r) / 3), min(d * 0.25, (y1r - y0r) / 3)
        for _ in range(int(rng.integers(1, 3)) if d < min(h, w) else 1):
            cx, cy = rng.uniform(x0r + mx, x1r - mx), rng.uniform(y0r + my, y1r - my)
            bx = DEFECTS[label](dr, cx, cy, d, m, g, rng)
            x0, y0 = max(0, int(np.floor(bx[0]))), max(0, int(np.floor(bx[1])))
            x1, y1 = min(w, int(np.ceil(bx[2]))), min(h, int(np.ceil(bx[3])))
            if x1 > x0 and y1 > y0:
                boxes.append(Box(x0, y0, x1, y1, label))
        img = np.asarray(pil, dtype=np.float32)
        for cx, cy, r, a in g["stains"]:
            ys, xs = slice(max(0, int(cy - r)), min(h, int(cy + r) + 1)), slice(max(0, int(cx - r)), min(w, int(cx + r) + 1))
            yy, xx = np.mgrid[ys, xs]
            alpha = a * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (0.35 * r * r)))[..., None]
            stain_col = m * 0.45 + np.array([35, 20, 0], np.float32)
            img[ys, xs] = img[ys, xs] * (1 - alpha) + stain_col * alpha
    noise = rng.standard_normal(img.shape, dtype=np.float32) * (3 * v["noise"])
    return np.clip(img + noise, 0, 255).astype(np.uint8), boxes


# ---------------------------------------------------------------------------------------- datasets


def _dataset_rng(seed: int, *key: object) -> np.random.Generator:
    h = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(h, "big")])


def _variation(spec: Spec, seed: int) -> dict:
    r = _dataset_rng(seed, "var", spec.name)
    return {"tint": r.uniform(0.8, 1.2, 3).astype(np.float32), "tint2": r.uniform(0.85, 1.15, 3).astype(np.float32),
            "pitch": float(r.uniform(0.75, 1.35)), "noise": float(r.uniform(0.6, 2.0)),
            "bright": float(r.uniform(0.85, 1.15)), "extra": float(r.uniform(0.7, 1.0))}


def _count(n: int, size: str) -> int:
    if size == "tiny":
        return 3
    if size == "full" and n >= 10:
        return n * 10
    return n


def _plan(spec: Spec, size: str) -> dict[str, int]:
    if spec.target:
        tr, va, te = spec.split_counts
        if size == "tiny":
            tr, va, te = 3, 2, 2
        elif size == "full":
            tr, va, te = 2 * tr, 2 * va, 4 * te
        return {c: tr + va + te for c in spec.counts}
    return {c: _count(n, size) for c, n in spec.counts.items()}


def _cost(spec: Spec, size: str) -> float:
    side = (spec.sizes[0] + spec.sizes[1]) / 2
    return sum(_plan(spec, size).values()) * side * side + (4e6 * 8 if spec.large else 0)


def generate_dataset(spec: Spec, root: Path, size: str, seed: int) -> dict:
    """Write one dataset folder; returns its summary row."""
    if root.exists():
        shutil.rmtree(root)
    (root / "images").mkdir(parents=True)
    v = _variation(spec, seed)
    plan = _plan(spec, size)
    lo, hi = (48, 128) if size == "tiny" else spec.sizes
    records: list[ImageRecord] = []
    sides: list[int] = []
    for label, n in plan.items():
        n_large = 0
        if spec.large:
            n_large = 1 if size != "full" else max(1, n // 50)
        for i in range(n):
            rng = _dataset_rng(seed, spec.name, label, i)
            if i < n_large:  # large image, defect scale kept small so defects are small boxes
                side = 160 if size == "tiny" else int(rng.uniform(1500, 2000))
                d = 40.0 if size == "tiny" else float(rng.uniform(180, 260))
            else:
                side = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
                d = float(side)
            aspect = rng.uniform(0.75, 1.33)
            h, w = (side, max(16, int(side * aspect))) if aspect < 1 else (max(16, int(side / aspect)), side)
            d = min(d, float(min(h, w)))
            arr, boxes = _render(spec.industry, h, w, d, label, v, rng)
            mode = INDUSTRY_MODE[spec.industry]
            im = Image.fromarray(arr).convert(mode) if mode == "L" else Image.fromarray(arr)
            rel = f"images/{label}/{label}_{i:05d}.{spec.fmt}"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if spec.fmt == "jpg":
                im.save(path, format="JPEG", quality=90)
            else:
                im.save(path, format="PNG", compress_level=1)
            if boxes:
                write_voc_xml(annotation_path(root, rel), filename=path.name, width=w, height=h,
                              depth=1 if mode == "L" else 3, boxes=boxes)
            records.append(ImageRecord(rel, label, "", tuple(boxes)))
            sides.append(max(h, w))
    if spec.target:
        tr, va, _ = spec.split_counts if size == "demo" else ((3, 2, 2) if size == "tiny" else
                                                              (2 * spec.split_counts[0], 2 * spec.split_counts[1], 0))
        records = [ImageRecord(r.path, r.label, "train" if k < tr else "val" if k < tr + va else "test", r.boxes)
                   for c in plan for k, r in enumerate([r for r in records if r.label == c])]
    else:
        records = make_splits(records, seed=seed)
    kind = "target" if spec.target else "source"
    write_dataset_yaml(root, name=spec.name, domain=[spec.industry],
                       description=f"synthetic {spec.industry} inspection {kind} dataset (rtl synth)",
                       license="CC0-1.0 (procedurally generated)")
    write_labels_csv(root, records)
    write_splits(root, records)
    counts = {c: {s: sum(1 for r in records if r.label == c and r.split == s) for s in SPLITS} for c in plan}
    return {"name": spec.name, "kind": kind, "industry": spec.industry, "mode": INDUSTRY_MODE[spec.industry],
            "format": spec.fmt, "classes": counts, "images": len(records),
            "min_side": min(sides), "max_side": max(sides)}


def _work(args: tuple) -> dict:
    return generate_dataset(*args)


SYNTH_MARKER = ".rtl-synth.json"  # written first: a rerun with the same parameters may overwrite


def generate_family(out: Path, *, size: str = "demo", seed: int = 0, force: bool = False) -> dict:
    """Write sources under out/sources/, targets under out/targets/ and out/relations.json.

    `out` must be empty, absent or a previous output of the same size and seed (`SYNTH_MARKER`), unless
    `force`: generating replaces dataset folders, so a folder holding user data is refused.
    Returns {"sources": [...rows], "targets": [...rows], "relations": {...}, "seconds": float}.
    """
    if size not in ("tiny", "demo", "full", "hard"):
        raise RtlError(f"unknown synth size {size!r}; valid: tiny, demo, full, hard")
    out = Path(out)
    claim_destination(out, SYNTH_MARKER, {"size": size, "seed": seed}, force=force)
    if size == "hard":  # the source-ranking family: its own worlds and relations (rtl.data.synth_hard)
        from rtl.data.synth_hard import generate_hard_family  # local: synth_hard imports this module

        return generate_hard_family(out, seed=seed)
    t0 = time.perf_counter()
    specs = _specs()
    jobs = [(s, out / ("targets" if s.target else "sources") / s.name, size, seed) for s in specs]
    if size == "tiny":
        rows = [_work(j) for j in jobs]
    else:
        jobs.sort(key=lambda j: -_cost(j[0], size))  # big first: better balance over workers
        procs = max(1, min(len(jobs), os.cpu_count() or 1))
        with mp.get_context("spawn").Pool(procs) as pool:
            rows = pool.map(_work, jobs, chunksize=1)
    rows.sort(key=lambda r: r["name"])
    relations = {
        s.name: {"related": list(s.related),
                 "reason": f"same industry ({s.industry}) and shared defect types "
                           f"({', '.join(sorted(set(s.counts) - {'ok'}))})"}
        for s in specs if s.target
    }
    (out / "relations.json").write_text(json.dumps(relations, indent=2, sort_keys=True) + "\n")
    return {"sources": [r for r in rows if r["kind"] == "source"],
            "targets": [r for r in rows if r["kind"] == "target"],
            "relations": relations, "seconds": round(time.perf_counter() - t0, 2)}


def format_summary(result: dict) -> str:
    """A table: one row per dataset (kind, industry, mode, images, classes with counts, sides)."""
    lines = [f"{'dataset':<18} {'kind':<6} {'mode':<4} {'fmt':<4} {'images':>6} {'sides':>10}  classes"]
    for r in result["sources"] + result["targets"]:
        cls = " ".join(f"{c}={sum(v.values())}" for c, v in r["classes"].items())
        lines.append(f"{r['name']:<18} {r['kind']:<6} {r['mode']:<4} {r['format']:<4} {r['images']:>6} "
                     f"{str(r['min_side']) + '-' + str(r['max_side']):>10}  {cls}")
    lines.append(f"{len(result['sources'])} sources, {len(result['targets'])} targets in {result['seconds']} s")
    return "\n".join(lines)
