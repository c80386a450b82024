"""Model-free low-level image statistics of a dataset, and a similarity between two datasets.

Ge & Yu, "Borrowing Treasures from the Wealthy: Deep Transfer Learning through Selective Joint
Fine-Tuning", CVPR 2017, pick source images whose low-level (Gabor / first-layer filter-bank) response
histograms resemble the target's. We use cheap global statistics of the same kind, one fixed-length
descriptor per image set (the mean of per-image descriptors), in four blocks:

    colour    3   Hasler-Süsstrunk colourfulness / 100 (clipped to 1), mean and std of HSV saturation
                  (zeros when `gray=True` or the images have one channel)
    intensity 16  histogram of luma (ITU-R BT.601), fraction of pixels per bin
    spectrum  8   radially averaged log10 power spectrum of the luma, centre square resized to 64x64,
                  Hann window, 8 log-spaced bands from 1 to 32 cycles/image, minus its mean over bands
                  (the spectrum's SHAPE: the texture scale, independent of contrast)
    gradient  8   histogram of gradient magnitude of the 64x64 luma in [0, 1] units, log-spaced edges

Gray targets: the caller computes the target's descriptor with gray=True and the source's with
gray=True as well (a colour source is converted to luma first), so a colour photo of the same textures
is not sunk by colour alone; a colour target compares colour too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from rtl.errors import RtlError

__all__ = ["image_stats", "image_stats_similarity", "DESCRIPTOR_LEN", "BLOCKS"]

SIDE = 64
N_INT, N_SPEC, N_GRAD = 16, 8, 8
BLOCKS: dict[str, slice] = {
    "colour": slice(0, 3),
    "intensity": slice(3, 3 + N_INT),
    "spectrum": slice(3 + N_INT, 3 + N_INT + N_SPEC),
    "gradient": slice(3 + N_INT + N_SPEC, 3 + N_INT + N_SPEC + N_GRAD),
}
DESCRIPTOR_LEN = 3 + N_INT + N_SPEC + N_GRAD
_GRAD_EDGES = np.array([0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, np.inf])


def _radial_bands() -> tuple[np.ndarray, np.ndarray]:
    """Band index (SIDE, SIDE) of each FFT frequency (-1 outside 1..SIDE/2 cycles) and band sizes (N_SPEC,)."""
    f = np.fft.fftfreq(SIDE) * SIDE  # cycles per image
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    edges = np.geomspace(1.0, SIDE / 2 + 1e-9, N_SPEC + 1)
    band = np.digitize(r, edges) - 1
    band[(r < 1.0) | (band >= N_SPEC)] = -1
    return band, np.bincount(band[band >= 0], minlength=N_SPEC)


_BAND, _BAND_N = _radial_bands()
_HANN = np.outer(np.hanning(SIDE), np.hanning(SIDE))


def _luma(img: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (H, W) float64 luma in [0, 255] (BT.601, as PIL's `L`)."""
    if img.shape[2] == 1:
        return img[..., 0].astype(np.float64)
    f = img.astype(np.float64)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def _square64(luma: np.ndarray) -> np.ndarray:
    """Centre square crop, resized (bilinear, antialiased when shrinking) to (SIDE, SIDE), in [0, 1]."""
    h, w = luma.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = np.clip(np.rint(luma[top : top + s, left : left + s]), 0, 255).astype(np.uint8)
    out = Image.fromarray(crop, mode="L").resize((SIDE, SIDE), Image.BILINEAR)
    return np.asarray(out, dtype=np.float64) / 255.0


def _one(img: np.ndarray, gray: bool) -> np.ndarray:
    """Descriptor (DESCRIPTOR_LEN,) of one (H, W, C) uint8 image."""
    desc = np.zeros(DESCRIPTOR_LEN)
    luma = _luma(img)  # (H, W)
    if img.shape[2] == 3 and not gray:
        f = img.astype(np.float64)
        rg = f[..., 0] - f[..., 1]
        yb = 0.5 * (f[..., 0] + f[..., 1]) - f[..., 2]
        colourful = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
        mx, mn = f.max(axis=2), f.min(axis=2)
        sat = np.where(mx > 0, (mx - mn) / np.where(mx > 0, mx, 1.0), 0.0)
        desc[BLOCKS["colour"]] = [min(colourful / 100.0, 1.0), sat.mean(), sat.std()]
    hist = np.bincount(
        np.clip(luma * (N_INT / 256.0), 0, N_INT - 1).astype(np.int64).ravel(), minlength=N_INT
    )
    desc[BLOCKS["intensity"]] = hist / hist.sum()
    sq = _square64(luma)  # (SIDE, SIDE)
    power = np.abs(np.fft.fft2((sq - sq.mean()) * _HANN)) ** 2  # (SIDE, SIDE)
    keep = _BAND >= 0
    band_pow = np.bincount(_BAND[keep], weights=power[keep], minlength=N_SPEC) / np.maximum(_BAND_N, 1)
    logp = np.log10(band_pow + 1e-8)
    desc[BLOCKS["spectrum"]] = logp - logp.mean()
    gy, gx = np.gradient(sq)
    ghist, _ = np.histogram(np.hypot(gx, gy), bins=_GRAD_EDGES)
    desc[BLOCKS["gradient"]] = ghist / ghist.sum()
    return desc


def _check_image(img: object, i: int) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise RtlError(f"image {i} is a {type(img).__name__}, expected a numpy (H, W, C) uint8 array")
    a = img[..., None] if img.ndim == 2 else img
    if a.ndim != 3 or a.shape[2] not in (1, 3) or a.shape[0] < 2 or a.shape[1] < 2:
        raise RtlError(f"image {i} has shape {img.shape}, expected (H, W, C) with C in (1, 3) and H, W >= 2")
    if a.dtype != np.uint8:
        raise RtlError(f"image {i} has dtype {a.dtype}, expected uint8")
    return a


def image_stats(images: Sequence[np.ndarray], *, gray: bool) -> np.ndarray:
    """Low-level descriptor (DESCRIPTOR_LEN,) float64 of a set of (H, W, C) uint8 images (mean over images).

    gray=True converts colour images to luma first and leaves the colour block zero: use it for a gray
    target AND for every source compared with it. Sizes may differ between images.
    """
    if images is None or len(images) == 0:
        raise RtlError("image_stats needs at least one image")
    return np.mean([_one(_check_image(img, i), gray) for i, img in enumerate(images)], axis=0)


def _check_desc(d: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(d, dtype=np.float64)
    if a.shape != (DESCRIPTOR_LEN,):
        raise RtlError(
            f"{what} descriptor has shape {a.shape}, expected ({DESCRIPTOR_LEN},) from image_stats"
        )
    if not np.all(np.isfinite(a)):
        raise RtlError(f"{what} descriptor contains NaN or inf")
    return a


def _hellinger(p: np.ndarray, q: np.ndarray) -> float:
    """Hellinger distance in [0, 1] between two histograms (each normalised to sum 1 here)."""
    p = np.clip(p, 0.0, None)
    q = np.clip(q, 0.0, None)
    p, q = p / max(p.sum(), 1e-12), q / max(q.sum(), 1e-12)
    return float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(p * q)))))


def image_stats_similarity(target_desc: np.ndarray, source_desc: np.ndarray) -> float:
    """Similarity in [0, 1] (1 = identical statistics) = 1 - mean of four block distances, each in [0, 1]:
    colour: mean |difference|; intensity and gradient: Hellinger distance of the histograms; spectrum:
    m / (1 + m) with m the mean |difference| of the centred log10 band powers (decades)."""
    t = _check_desc(target_desc, "target")
    s = _check_desc(source_desc, "source")
    b = BLOCKS
    m = float(np.mean(np.abs(t[b["spectrum"]] - s[b["spectrum"]])))
    dist = [
        float(np.mean(np.abs(t[b["colour"]] - s[b["colour"]]))),
        _hellinger(t[b["intensity"]], s[b["intensity"]]),
        m / (1.0 + m),
        _hellinger(t[b["gradient"]], s[b["gradient"]]),
    ]
    return float(1.0 - np.mean(dist))
