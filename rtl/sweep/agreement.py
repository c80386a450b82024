"""Label agreement between two sources' specialists: a source the target's probe misses, found from its best pick.

Why (issue 10, the Jaccard target): the specialists' probe on the target (rtl.sweep.specialists) finds the
target's related sources that image like the target, and misses the *shifted* ones -- the same product and
defects in a gray scan, or at another magnification: their frozen features probe the target about as badly
as unrelated look-alikes', and no signal judged on the target's 24-32 val images separated them (sessions
12-15: test-time views, thresholds, LEEP, short fine-tunes). What a shifted related source shares with the
target's best source is what its *labels mean*: the specialist of one, applied to the other's held-out
images, predicts the other's labels by class name. A harmful source (its labels follow a shortcut, defects
drawn regardless) does not agree with anyone's head, and an unrelated source rarely has the class names to be
compared at all.

    agreement(a, u) = max over the two directions (a's head on u's images, u's head on a's images) of the
                      balanced accuracy of the head's argmax over their shared class names, rescaled so
                      chance = 0 and perfect = 1 (Cohen's kappa form)

Before a head sees the other source's images they are put in its imaging: luma (ITU-R BT.601, replicated)
when the head's source is gray and the other is not, then each channel affinely matched to the head's source's
dataset-level mean and std (Reinhard et al. 2001, "Color transfer between images", at dataset level: a
per-class colour cast survives, so a tint shortcut still disagrees). Without this a colour head reads a gray
scan as noise (kappa ~0 on every gray-shifted related source, draws 7-8).

`expand` adds to the specialists' chosen set every unit that (1) shares >= MIN_SHARED class names with the
best-probed unit (the anchor), (2) agrees with it >= the threshold (`importance_candidates.specialist_agreement`,
0.2), and (3) probes the target no worse than the median unit. Measured before it was built (docs/measurements/
search.md, session 16; rule fixed on draws 7 + 8, then tested once on draw 9): J >= 0.8 with the related set on
15 of 18 (seed, target) pairs of draw 9 instead of 8, no harmful source added.

The gate: nothing is added unless the anchor's own labels mean the target's -- its head, applied to the target's
train + val images, predicts their labels by name (>= MIN_SHARED shared names, kappa >= the same threshold). On a
target with no related source the best-probed unit is an unrelated one that happens to help, and its relatives
agree with *it*: adding them cost 0.25-0.31 of test error on one such target (draw 8, marble). Offline over
draws 7-9 every related anchor passed the gate (kappa 0.33-1.00) and every other anchor failed it.

As the default (session 16, four draws of the hard family): the sweep's pick matched the related set on 50 of 60
(seed, target) instead of 30, quality level with the probe's cut alone (80 pairs), no harmful source added.

The prune (`importance_candidates.specialist_prune`, the default since session 17): the anchor is the
best-probed member of the probe's cut that passes the gate (the cut's first member may be an unrelated source
whose features happen to probe best), and the cut keeps only the members whose labels agree with the anchor's
(kappa >= the threshold, over their shared names); a member that disagrees (a shortcut source that probes well)
or shares < MIN_SHARED_CUT = 2 class names with the anchor (`ok` alone: an unrelated source) is dropped, and the
ranking, the trial's tag and the report say which and why. Where no member passes the gate the cut is kept whole.
Members sharing only `ok` + one defect name are judged on those two (not dropped unseen, as the pre-registered rule
did with 3): related datasets often share part of their vocabulary (the demo's film_b: ok, bubble, stain beside
film_a's ok, bubble, scratch, spot); the price on the hard family: an unrelated source drawing a same-named defect
alike is kept (bricks_a's crescent for grid, grain_b's cross for dots: 3 of 84 pairs). A related source whose
dataset names every class differently is still dropped -- hence `class_aliases`. Measured in docs/measurements/search.md,
session 17 (the rule with 3 pre-registered and confirmed on two unseen draws; the 2 chosen after, on the demo).

Class names are compared after `rtl.sweep.candidates.normal_name` (case, `-` and `_`, regular plurals) and the
spec's `class_aliases`; datasets that name the same defect differently ("scratch" / "scuff") are compared only
when an alias says so. Defects drawn alike under the same name in another product are read as agreeing: on the demo family
semiconductor_a (scratch, spot) is added to target_pcb's pcb_b, pcb_a.

Cost: no pretraining; forward passes of two specialists over at most 256 held-out images of each unit compared
(only units that pass the median gate and share the class names): a few seconds per target on 2 CPUs with the
benchmark's 32-px small_cnn.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rtl.errors import RtlError

MIN_SHARED = 3     # class names a pair must share (with `ok`: two defect names) to be compared at all
MIN_SHARED_CUT = 2  # ... for a member of the probe's cut to be judged by the prune (`ok` + one defect name): the
#                     probe already vouches for it, and related datasets often share only part of their vocabulary
PER_CLASS = 32     # held-out images per class name of a unit used to measure agreement (deterministic: the first)
PER_UNIT = 256     # ... and at most this many per unit (memory and CPU time at 224 px: 256 x 150 KB as uint8)
GRAY_TOL = 1.0     # mean |R - G| + |G - B| (uint8) below which a source's images are gray

Aliases = tuple[tuple[str, str], ...]  # `class_aliases` as sorted (name, canonical) pairs (hashable: cache keys)


def kappa(pred: np.ndarray, truth: np.ndarray, names: list[str]) -> float:
    """Balanced accuracy of `pred` against `truth` over `names`, rescaled so chance is 0 and perfect is 1.
    Classes without an image do not count; fewer than two with images -> nan."""
    acc = [float(np.mean(pred[truth == n] == n)) for n in names if np.any(truth == n)]
    if len(acc) < 2:
        return float("nan")
    k = len(names)
    return (float(np.mean(acc)) - 1.0 / k) / (1.0 - 1.0 / k)


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel dataset mean and std of images (N, 3, H, W), each (1, 3, 1, 1)."""
    return x.mean(axis=(0, 2, 3), keepdims=True), x.std(axis=(0, 2, 3), keepdims=True)


def match_imaging(x: np.ndarray, ref: tuple[np.ndarray, np.ndarray], *, gray: bool) -> np.ndarray:
    """Images `x` (N, 3, H, W) float in [0, 1] put in the imaging of a reference source whose `channel_stats`
    are `ref`: luma first when `gray` (the reference source is gray), then per-channel mean / std matched."""
    if gray:
        y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        x = np.repeat(y[:, None], 3, axis=1)
    (mu_x, sd_x), (mu_r, sd_r) = channel_stats(x), ref
    return np.clip((x - mu_x) / np.maximum(sd_x, 1e-3) * sd_r + mu_r, 0.0, 1.0).astype(np.float32)


def is_gray(x: np.ndarray) -> bool:
    """(N, 3, H, W) in [0, 1]: are the channels equal (a gray source stored as RGB)?"""
    if len(x) == 0:
        return False
    d = np.abs(x[:, 0] - x[:, 1]).mean() + np.abs(x[:, 1] - x[:, 2]).mean()
    return bool(d * 255.0 < GRAY_TOL)


@lru_cache(maxsize=4)
def _rows_index(corpus: str, version: str) -> tuple[np.ndarray, np.ndarray]:
    """(class_id, held_out) of every corpus row, in the shards' order -- the metadata columns only."""
    from rtl.train.strategies import open_view

    t = open_view(corpus).table(columns=["class_id", "split"])
    split = t.column("split").to_numpy(zero_copy_only=False)
    return t.column("class_id").to_numpy().astype(np.int64), np.isin(split, ["val", "test"])


class ImageSet:
    """Images as uint8 (N, 3, s, s) with their class names (`normal_name`d, as the candidates compare names),
    whether they are gray, and their per-channel stats -- computed once."""

    def __init__(self, u8: np.ndarray, names: list[str], aliases: Aliases = ()) -> None:
        from rtl.sweep.candidates import normal_name

        self._u8 = u8
        self.names = np.array([normal_name(n, dict(aliases)) for n in names], dtype=object).astype(str)
        x = self.x
        self.gray = is_gray(x)
        self.stats = channel_stats(x) if len(x) else (np.zeros((1, 3, 1, 1)), np.ones((1, 3, 1, 1)))

    @property
    def x(self) -> np.ndarray:
        """(N, 3, s, s) float32 in [0, 1] (converted on each access: kept as uint8)."""
        return self._u8.astype(np.float32) / 255.0


class UnitImages(ImageSet):
    """Held-out images of one unit (dataset or domain tag) of a corpus: (N, 3, s, s) float in [0, 1], centre
    crops at the corpus' min side, and their class names. Val + test rows (the other source's specialist never
    trained on this source at all; its own specialist trained on all of its splits); all rows when a unit has
    none held out. At most min(PER_CLASS, PER_UNIT // classes) per class name, the first in the shards' order
    (deterministic); only those rows' pixels are read, so a large corpus costs a metadata scan and a few hundred
    images per unit."""

    def __init__(self, corpus: str, unit: str, by: str, side: int, aliases: Aliases = ()) -> None:
        import pyarrow as pa

        from rtl.data.transforms import to_channels
        from rtl.sweep.candidates import class_units
        from rtl.train.corpus_data import CorpusDataset
        from rtl.train.strategies import open_view
        from rtl.train.target_data import crop

        view = open_view(corpus)
        classes = view.manifest["classes"]
        names = {int(c["id"]): str(c["label"]) for c in classes}
        mine = np.array(sorted(int(c["id"]) for c in classes if unit in class_units(c, by)), np.int64)
        class_id, held = _rows_index(corpus, view.version)
        rows = np.isin(class_id, mine)
        if (rows & held).any():
            rows &= held
        keep, seen = [], {}
        cap = max(1, min(PER_CLASS, PER_UNIT // max(1, len({names[int(c)] for c in mine}))))
        for i in np.flatnonzero(rows):
            n = names[int(class_id[i])]
            if seen.get(n, 0) < cap:
                seen[n] = seen.get(n, 0) + 1
                keep.append(int(i))
        imgs: list[np.ndarray] = []
        if keep:
            table = view.dataset().take(pa.array(keep, pa.int64()),
                                        columns=["pixels", "height", "width", "channels", "class_id"])
            ds = CorpusDataset(table, crop=side, in_channels=3, train=False)
            imgs = [to_channels(crop(ds.image(i), side, train=False), 3) for i in range(len(ds))]
        super().__init__(np.stack(imgs).transpose(0, 3, 1, 2) if imgs else np.zeros((0, 3, side, side), np.uint8),
                         [names[int(class_id[i])] for i in keep], aliases)


class Head:
    """A specialist's classifier restricted to its own unit's classes, read by class name."""

    def __init__(self, ckpt: str | Path, unit: str, by: str, aliases: Aliases = ()) -> None:
        from rtl.train.checkpoint import load_checkpoint

        self.model, _ = load_checkpoint(str(ckpt))
        self.model.eval()
        self.in_channels = int(getattr(self.model, "in_channels", 3))
        self.unit, self.by, self.aliases = unit, by, dict(aliases)
        self._ids: dict[str, list[int]] | None = None

    def ids(self, manifest: dict) -> dict[str, list[int]]:
        """class name (`normal_name`d) -> the corpus class ids of this unit with that name (a domain tag, or names
        that differ only in case and separators, may have several)."""
        if self._ids is None:
            from rtl.sweep.candidates import class_units, normal_name

            ids: dict[str, list[int]] = {}
            for c in manifest["classes"]:
                if self.unit in class_units(c, self.by):
                    ids.setdefault(normal_name(str(c["label"]), self.aliases), []).append(int(c["id"]))
            self._ids = ids
        return self._ids

    def predict(self, x: np.ndarray, names: list[str], manifest: dict) -> np.ndarray:
        """Argmax over `names` (each name's best logit) of the head on `x` (N, 3, H, W) in [0, 1]."""
        import torch

        from rtl.data.transforms import to_channels
        from rtl.train.target_data import mean_std

        ids = self.ids(manifest)
        if self.in_channels != 3:
            x = np.stack([to_channels((im.transpose(1, 2, 0) * 255).astype(np.uint8), self.in_channels)
                          .transpose(2, 0, 1).astype(np.float32) / 255.0 for im in x])
        mean, std = mean_std(self.in_channels)
        with torch.no_grad():
            t = (torch.from_numpy(np.ascontiguousarray(x)) - mean) / std
            logits = torch.cat([self.model(t[i:i + 256]).float() for i in range(0, len(t), 256)]).numpy()
        per_name = np.stack([logits[:, ids[n]].max(axis=1) for n in names], axis=1)
        return np.array(names)[per_name.argmax(axis=1)]


def one_way(head: Head, head_images: ImageSet, other: ImageSet, names: list[str], manifest: dict) -> float:
    """`head`'s kappa on `other`'s images of the shared `names`, in the head's imaging."""
    keep = np.isin(other.names, names)
    if keep.sum() == 0 or len(head_images.names) == 0:
        return float("nan")
    x = match_imaging(other.x[keep], head_images.stats, gray=head_images.gray and not other.gray)
    return kappa(head.predict(x, names, manifest), other.names[keep], names)


def shared_names(a: ImageSet, b: ImageSet) -> list[str]:
    return sorted(set(a.names) & set(b.names))


def agreement(a: str, u: str, heads: dict[str, Head], images: dict[str, ImageSet], manifest: dict,
              min_shared: int = MIN_SHARED) -> float | None:
    """Agreement of units a and u (module docstring): the larger of the two directions' kappa over their shared
    class names; None when they share fewer than MIN_SHARED or neither direction could be scored."""
    names = shared_names(images[a], images[u])
    if len(names) < min_shared:
        return None
    k = [v for v in (one_way(heads[a], images[a], images[u], names, manifest),
                     one_way(heads[u], images[u], images[a], names, manifest)) if v == v]
    return max(k) if k else None


@lru_cache(maxsize=16)
def _unit_images(corpus: str, version: str, unit: str, by: str, side: int, aliases: Aliases) -> UnitImages:
    return UnitImages(corpus, unit, by, side, aliases)


class TargetImages(ImageSet):
    """The target's train + val images (never its test split) as `UnitImages` holds a unit's: centre crops at
    the corpus' min side, with their class names."""

    def __init__(self, target: str, sides: tuple[int, int], aliases: Aliases = ()) -> None:
        from rtl.select.inference import target_dataset
        from rtl.train.target_data import mean_std

        mean, std = (t.numpy() for t in mean_std(3))
        xs, names = [], []
        for split in ("train", "val"):
            try:
                ds, classes = target_dataset(target, split, in_channels=3, sides=sides)
            except RtlError:  # an empty split: the other one alone
                continue
            for i in range(len(ds)):
                x, y = ds[i]
                xs.append(np.clip((x.numpy() * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8))
                names.append(classes[int(y)])
        super().__init__(np.stack(xs) if xs else np.zeros((0, 3, sides[0], sides[0]), np.uint8), names, aliases)


@lru_cache(maxsize=8)
def _target_images(target: str, sides: tuple[int, int], aliases: Aliases) -> TargetImages:
    return TargetImages(target, sides, aliases)


def expand(spec: Any, losses: dict[str, float], chosen: list[str], ckpt_of: Callable[[str], Path],
           threshold: float, target: str, *, prune: bool = False,
           aliases: dict[str, str] | None = None) -> tuple[list[str], dict[str, Any]]:
    """The specialists' chosen set after the agreement (module docstring): `chosen` (the probe's cut, best-probed
    first) without the members the prune drops, then the units added, in ascending probe loss; and what was
    measured: {"anchor": unit, "threshold": t, "prune": bool, "aliases": {...}, "target": {"shared": n,
    "agreement": kappa | None} (the anchor's gate), "gates": {unit: the same} (every cut member tried as the
    anchor), "agreement": {unit: kappa}, "shared": {unit: n}, "added": [...], "dropped": {unit: why}}.
    Nothing changes unless the anchor's head reads the target's own train + val labels by name (kappa >=
    threshold over >= MIN_SHARED shared names): on a target without a related source the best-probed unit is an
    unrelated one that happens to help, and its own relatives agree with it without helping the target (module
    docstring, "The gate"). The anchor is the cut's first member; with `prune`, the first member (in probe
    order) that passes the gate, and every other member that disagrees with it (kappa < threshold) or shares
    < MIN_SHARED_CUT class names with it is dropped ("The prune").
    `ckpt_of`: unit -> its specialist checkpoint (asked only for the units tried as the anchor and compared)."""
    from rtl.train.strategies import open_view

    al: Aliases = tuple(sorted((aliases or {}).items()))
    info: dict[str, Any] = {"anchor": chosen[0] if chosen else None, "threshold": threshold, "prune": prune,
                            "aliases": dict(al), "target": {"shared": 0, "agreement": None}, "gates": {},
                            "agreement": {}, "shared": {}, "added": [], "dropped": {}}
    if not chosen:
        return [], info
    by = spec.search.sources.by
    median = statistics.median(losses.values())
    probed_well = [u for u in sorted(losses, key=lambda v: (losses[v], v)) if u not in chosen and losses[u] <= median]
    tried = list(chosen) if prune else chosen[:1]
    if not probed_well and len(tried) < 2:
        return list(chosen), info
    view = open_view(spec.corpus_path())
    corpus, manifest, side = str(Path(spec.corpus_path()).resolve()), view.manifest, int(spec.image.min_side)
    images = {v: _unit_images(corpus, view.version, v, by, side, al) for v in [*tried, *probed_well]}
    tgt = _target_images(str(Path(target).resolve()), (side, int(spec.image.max_side)), al)
    heads: dict[str, Head] = {}
    a = None
    for c in tried:  # the gate: the first member whose own labels read the target's
        names = shared_names(images[c], tgt)
        k_t = float("nan")
        if len(names) >= MIN_SHARED:
            heads[c] = Head(ckpt_of(c), c, by, al)
            k_t = one_way(heads[c], images[c], tgt, names, manifest)
        info["gates"][c] = {"shared": len(names), "agreement": round(float(k_t), 4) if k_t == k_t else None}
        if k_t >= threshold:  # False for nan
            a = c
            break
    info["anchor"] = a or chosen[0]
    info["target"] = info["gates"][info["anchor"]]
    if a is None:
        return list(chosen), info

    def agrees(u: str, min_shared: int = MIN_SHARED) -> bool | None:
        """Whether u's labels agree with the anchor's; None when they cannot be compared (fewer than `min_shared`
        shared names, or neither direction could be scored)."""
        info["shared"][u] = len(shared_names(images[a], images[u]))
        if info["shared"][u] < min_shared:
            return None  # nothing to compare: its specialist is not even loaded
        if u not in heads:
            heads[u] = Head(ckpt_of(u), u, by, al)
        k = agreement(a, u, heads, images, manifest, min_shared)
        if k is None:
            return None
        info["agreement"][u] = round(float(k), 4)
        return k >= threshold

    for u in (m for m in chosen if m != a) if prune else ():
        ok = agrees(u, MIN_SHARED_CUT)
        if not ok:
            info["dropped"][u] = (
                f"labels disagree with {a}'s (kappa {info['agreement'][u]:.3f} < {threshold:g})" if ok is False
                else f"shares {info['shared'][u]} class names with {a}" if info["shared"][u] < MIN_SHARED_CUT
                else f"labels not comparable with {a}'s (no held-out images)")
    info["added"] = [u for u in probed_well if agrees(u)]
    return [u for u in chosen if u not in info["dropped"]] + info["added"], info
