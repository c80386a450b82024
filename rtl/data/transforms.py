"""Image transforms shared by corpus build and target loading: pure NumPy/PIL, no Ray.

Every image in `rtl` goes through the same three steps so source corpus and target data look alike:
`decode_image` (any file -> (H, W, C) uint8, C in {1, 3}), then either `fit_size` (keep aspect, resize,
zero-pad so both sides land in [min_side, max_side]) or, for images so large that shrinking them would
erase small defects (`needs_patches`), `patch_crop` at native resolution around the annotated boxes.

Decoding is defensive because inspection datasets are messy: zero-byte and truncated files, text files
named `.png`, 16-bit TIFFs from line cameras, palette PNGs with transparency, CMYK JPEGs, EXIF-rotated
phone pictures and the occasional decompression bomb. Each failure is a `DecodeError` with a short
`reason` the corpus manifest lists; nothing else escapes.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rtl.data.convention import Box

__all__ = ["DecodeError", "decode_fit", "decode_image", "fit_dims", "fit_size", "needs_patches", "open_image",
           "oriented_size", "patch_crop", "to_channels"]

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_INT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


class DecodeError(Exception):
    """An image that cannot be used; `reason` is short and stable (it is counted in the manifest)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def open_image(src: bytes | str | Path, *, max_pixels: int = 64_000_000) -> Image.Image:
    """Open an image file (path or bytes) and check its header; pixels are not decoded yet.

    Raises `DecodeError` for a missing/zero-byte file, a file that is not an image, an empty size, or more
    than `max_pixels` pixels (decompression bombs are refused before any pixel is decoded). Pass the result
    to `decode_image` / `decode_fit`, or read its size with `oriented_size` (a header-only read).
    """
    if isinstance(src, (str, Path)):
        try:
            data = Path(src).read_bytes()
        except FileNotFoundError:
            raise DecodeError("missing file", str(src)) from None
        except OSError as e:
            raise DecodeError("unreadable file", f"{src}: {e.strerror or e}") from None
    else:
        data = bytes(src)
    if not data:
        raise DecodeError("zero-byte file")
    with _decode_errors():
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w <= 0 or h <= 0:
            raise DecodeError("empty image", f"{w}x{h}")
        if w * h > max_pixels:
            raise DecodeError("decompression bomb", f"{w}x{h} > {max_pixels} pixels")
    return im


@contextlib.contextmanager
def _decode_errors() -> Iterator[None]:
    """Map whatever Pillow raises while reading a header or decoding pixels to one `DecodeError` reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit
            yield
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError("decompression bomb", str(e)) from None
    except UnidentifiedImageError:
        raise DecodeError("not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
        msg = str(e)
        if "truncated" in msg or isinstance(e, EOFError) or "broken data stream" in msg:
            raise DecodeError("truncated image", msg) from None
        raise DecodeError("corrupt image", msg) from None


def _orientation(im: Image.Image) -> int:
    """EXIF orientation tag (1-8; 1 when absent or unreadable)."""
    try:
        o = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: treated as unrotated (as decode_image does)
        return 1
    return o if 1 <= o <= 8 else 1


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """(H, W) the decoded image will have (EXIF orientation applied), read from the header only."""
    w, h = im.size
    return (w, h) if _orientation(im) in (5, 6, 7, 8) else (h, w)


def decode_image(src: bytes | str | Path | Image.Image, *, keep_gray: bool = True,
                 max_pixels: int = 64_000_000) -> np.ndarray:
    """Decode an image file (path, bytes, or an `open_image` result) to (H, W, C) uint8 with C in {1, 3}.

    Normalisation: EXIF orientation applied (`ImageOps.exif_transpose`); first frame of multi-frame files;
    `1` -> L; `P` -> RGB(A); alpha (RGBA/LA/PA) composited on black (premultiplied, so transparent = 0);
    16/32-bit integer images scaled to 8 bit by their bit depth (smallest of 8/10/12/14/16/32 bits that
    holds the maximum, so a 12-bit camera image is not left 16x too dark); float images min-max scaled;
    CMYK/YCbCr/HSV/LAB -> RGB. Gray stays 1 channel when `keep_gray`, else it is replicated to 3.
    `max_pixels` is checked from the header before any pixel is decoded (decompression bombs).
    """
    im = src if isinstance(src, Image.Image) else open_image(src, max_pixels=max_pixels)
    with _decode_errors():
        im.load()
    return _to_array(_exif_transpose(im), keep_gray)


def decode_fit(src: bytes | str | Path | Image.Image, min_side: int, max_side: int, *, keep_gray: bool = True,
               max_pixels: int = 64_000_000, upscale: bool = True, draft: bool = True) -> np.ndarray:
    """`fit_size(decode_image(src), min_side, max_side)` in one step, cheaper when the fit shrinks a lot.

    This is the decode + fit of every rtl path that fits images (corpus build, fine-tuning data, `rtl
    predict`), so source, training and serving pixels come from one function. Same output shape and
    `DecodeError`s as the two-step form. When a JPEG is at least 2x larger than the fit in both sides
    (`draft`), libjpeg decodes it at 1/2, 1/4 or 1/8 scale in the DCT domain (`Image.draft`; the scaled
    IDCT is itself a low-pass filter, the JPEG standard's own downscaling), still at least as large as the
    fit, which the usual antialiased resize then finishes on the exact source box (as `Image.thumbnail`
    does): a 250 px JPEG fit to 72 px decodes at 125 px, ~40 % less CPU. Those pixels differ from full
    decode + resize by ~0.3-0.6 grey levels on average, a few at most (tests/test_decode_fit.py holds the
    bound); every other image is bit-identical to the two-step form. L and RGB images are resized as PIL
    images, skipping a NumPy round trip (same pixels).
    """
    if not 0 < min_side <= max_side:
        raise ValueError(f"need 0 < min_side <= max_side, got {min_side}, {max_side}")
    im = src if isinstance(src, Image.Image) else open_image(src, max_pixels=max_pixels)
    h, w = oriented_size(im)
    nh, nw = fit_dims(h, w, min_side, max_side, upscale=upscale)
    if draft and im.format == "JPEG" and 2 * nh <= h and 2 * nw <= w:
        stored = im.size
        rw, rh = (nh, nw) if _orientation(im) in (5, 6, 7, 8) else (nw, nh)  # in stored orientation
        with _decode_errors():
            scaled = im.draft(None, (rw, rh))
            im.load()
        if scaled is not None and im.size != stored:
            # box: the part of the reduced image that is the original (its last block may be partial),
            # so the geometry is exactly that of resizing the full image (as PIL's `thumbnail` does)
            im = im.resize((rw, rh), Image.Resampling.BILINEAR, box=scaled[1], reducing_gap=3.0)
            arr = _to_array(_exif_transpose(im), keep_gray)
            return _pad_centre(arr if arr.shape[:2] == (nh, nw) else _resize(arr, nh, nw), min_side)
    with _decode_errors():
        im.load()
    im = _exif_transpose(im)
    if im.mode in ("L", "RGB") and im.size != (nw, nh):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)  # = _resize on the array
    arr = _to_array(im, keep_gray)
    if arr.shape[:2] != (nh, nw):
        arr = _resize(arr, nh, nw)
    return _pad_centre(arr, min_side)


def _exif_transpose(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not lose the image; keep it unrotated
        return im


def _to_array(im: Image.Image, keep_gray: bool) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBa", "La"):  # already premultiplied
        im = im.convert("RGBA" if mode == "RGBa" else "LA")
        mode = im.mode
    if mode in _ALPHA_MODES:
        a = np.asarray(im, dtype=np.uint16)  # (H, W, 4) or (H, W, 2)
        arr = (a[..., :-1] * a[..., -1:] + 127) // 255  # composite on black
        arr = arr.astype(np.uint8)
    elif mode in _INT_MODES:
        arr = _scale_int(np.asarray(im))[..., None]
    elif mode == "F":
        arr = _scale_float(np.asarray(im, dtype=np.float64))[..., None]
    elif mode == "L":
        arr = np.asarray(im, dtype=np.uint8)[..., None]
    elif mode == "RGB":
        arr = np.asarray(im, dtype=np.uint8)
    else:  # CMYK, YCbCr, HSV, LAB, I;16 variants PIL reports oddly, ...
        try:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (ValueError, OSError) as e:
            raise DecodeError(f"unsupported mode {mode}", str(e)) from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1 and not keep_gray:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _scale_int(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.int64)
    a = np.clip(a, 0, None)
    top = int(a.max()) if a.size else 0
    if top <= 255:
        return a.astype(np.uint8)
    bits = next((b for b in (10, 12, 14, 16, 32) if top < (1 << b)), 63)
    return ((a * 255 + ((1 << bits) - 1) // 2) // ((1 << bits) - 1)).astype(np.uint8)


def _scale_float(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.round(a * 255).astype(np.uint8)
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def fit_size(img: np.ndarray, min_side: int, max_side: int, *, upscale: bool = True) -> np.ndarray:
    """Resize keeping aspect, then zero-pad (centred) so height and width are both in [min_side, max_side].

    Scale rule: shrink so the long side is <= max_side. If the image is small (long side < max_side and
    short side < min_side) and `upscale`, enlarge until the short side reaches min_side or the long side
    reaches max_side, whichever comes first (so small images are not mostly padding). A short side still
    below min_side is then zero-padded; padding is centred (extra pixel at the bottom/right), so the image
    content stays in the middle where the eval centre crop looks. Very elongated images end up as a
    strip across a black min_side-wide band.
    """
    if not 0 < min_side <= max_side:
        raise ValueError(f"need 0 < min_side <= max_side, got {min_side}, {max_side}")
    h, w = img.shape[:2]
    nh, nw = fit_dims(h, w, min_side, max_side, upscale=upscale)
    out = _resize(img, nh, nw) if (nh, nw) != (h, w) else img
    return _pad_centre(out, min_side)


def fit_dims(h: int, w: int, min_side: int, max_side: int, *, upscale: bool = True) -> tuple[int, int]:
    """(H, W) `fit_size` resizes an h x w image to, before padding (see `fit_size` for the rule)."""
    long_, short = max(h, w), min(h, w)
    s = min(1.0, max_side / long_)
    if upscale and long_ < max_side and short < min_side:
        s = min(min_side / short, max_side / long_)
    return min(max_side, max(1, round(h * s))), min(max_side, max(1, round(w * s)))


def _pad_centre(out: np.ndarray, min_side: int) -> np.ndarray:
    """Zero-pad (centred; extra pixel bottom/right) so both sides are at least `min_side`."""
    nh, nw = out.shape[:2]
    ph, pw = max(0, min_side - nh), max(0, min_side - nw)
    if ph or pw:
        c = out.shape[2]
        canvas = np.zeros((nh + ph, nw + pw, c), np.uint8)
        top, left = ph // 2, pw // 2
        canvas[top:top + nh, left:left + nw] = out
        out = canvas
    return np.ascontiguousarray(out)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Antialiased resize (PIL bilinear with a support scaled to the reduction, i.e. a proper low-pass)."""
    c = img.shape[2]
    pil = Image.fromarray(img[..., 0] if c == 1 else img)
    # reducing_gap: integer box-reduce first when shrinking a lot (fast, and still alias-free)
    out = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def needs_patches(h: int, w: int, min_side: int, max_side: int, *, boxes=(), max_downscale: float = 8.0,
                  min_defect_px: float = 6.0) -> bool:
    """True when fitting (h, w) into max_side would lose small defects, so patches are cut instead.

    Two triggers: a shrink by more than `max_downscale` (defect size unknown: anything small is lost), or
    VOC boxes whose smallest short side would shrink below `min_defect_px` pixels (0 turns this off).
    Patching is kept rare on purpose: targets are shrunk whole, and a corpus of mostly native-resolution
    patches looks unlike them (docs/measurements/selection.md: selection precision dropped when most demo
    images were patched). The box trigger only fires on images that have boxes — usually the defect
    classes — so at very small sides (the CPU demo) turn it off to keep one geometry across classes.
    `min_side` is unused by the rule but kept so callers pass the corpus geometry as one unit.
    """
    del min_side
    scale = max(h, w) / max_side  # downscale factor fit_size would apply
    if scale <= 1:
        return False
    if scale > max_downscale:
        return True
    if boxes and min_defect_px > 0:
        smallest = min(min(b.xmax - b.xmin, b.ymax - b.ymin) for b in boxes)
        return smallest / scale < min_defect_px
    return False


def patch_crop(img: np.ndarray, boxes, *, size: int, max_patches: int,
               seed: int) -> list[tuple[np.ndarray, list[Box]]]:
    """Cut up to `max_patches` size x size patches; returns [(patch (size, size, C), boxes in patch coords)].

    With boxes: one defect patch per box (boxes already inside an earlier defect patch are not repeated),
    centred on the box and shifted to stay inside the image, so a box no larger than `size` is whole in its
    patch; then background patches that overlap no box, placed by a seeded RNG, fill the remaining slots
    (at most as many as there are defect patches, so defect and background stay balanced). At least one
    slot is kept for background when there are boxes and max_patches > 1. Without boxes: a seeded
    selection of grid cells covering the image. Every patch lists all boxes it intersects, clipped to it.
    An image smaller than `size` is zero-padded at the bottom/right first (coordinates unchanged).
    """
    if size <= 0 or max_patches <= 0:
        raise ValueError("size and max_patches must be positive")
    h0, w0 = img.shape[:2]
    if h0 < size or w0 < size:
        pad = np.zeros((max(h0, size), max(w0, size), img.shape[2]), np.uint8)
        pad[:h0, :w0] = img
        img = pad
    h, w = img.shape[:2]
    rng = np.random.default_rng(seed)
    bx = [_clip_box(b, w0, h0) for b in boxes]
    bx = [b for b in bx if b is not None]
    origins: list[tuple[int, int]] = []  # (y, x)
    if bx:
        n_def_max = max_patches - 1 if max_patches > 1 else 1
        for b in sorted(bx, key=lambda b: (b.ymin, b.xmin, b.ymax, b.xmax, b.label)):
            if len(origins) >= n_def_max:
                break
            if any(_contains((y, x, size), b) for y, x in origins):
                continue
            y = _start(b.ymin, b.ymax, size, h)
            x = _start(b.xmin, b.xmax, size, w)
            origins.append((y, x))
        n_bg = min(max_patches - len(origins), len(origins))
        bg: list[tuple[int, int]] = []
        for _ in range(50 * max(1, n_bg)):
            if len(bg) >= n_bg:
                break
            y = int(rng.integers(0, h - size + 1))
            x = int(rng.integers(0, w - size + 1))
            if not any(_intersects((y, x, size), b) for b in bx) and (y, x) not in bg:
                bg.append((y, x))
        origins += bg
    else:
        ys = _grid(h, size)
        xs = _grid(w, size)
        cells = [(y, x) for y in ys for x in xs]
        if len(cells) > max_patches:
            pick = np.sort(rng.choice(len(cells), size=max_patches, replace=False))
            cells = [cells[i] for i in pick]
        origins = cells
    out = []
    for y, x in origins:
        patch = np.ascontiguousarray(img[y:y + size, x:x + size])
        inside = []
        for b in bx:
            c = _clip_box(Box(b.xmin - x, b.ymin - y, b.xmax - x, b.ymax - y, b.label), size, size)
            if c is not None:
                inside.append(c)
        out.append((patch, inside))
    return out


def _start(lo: int, hi: int, size: int, extent: int) -> int:
    """Patch start so [lo, hi) is centred in [start, start+size) and the patch stays in [0, extent)."""
    s = lo - (size - (hi - lo)) // 2
    return int(min(max(s, 0), extent - size))


def _grid(extent: int, size: int) -> list[int]:
    n = max(1, math.ceil(extent / size))
    if n == 1:
        return [0]
    return [round(i * (extent - size) / (n - 1)) for i in range(n)]


def _clip_box(b: Box, w: int, h: int) -> Box | None:
    x0, y0 = max(0, int(b.xmin)), max(0, int(b.ymin))
    x1, y1 = min(w, int(b.xmax)), min(h, int(b.ymax))
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0, y0, x1, y1, b.label)


def _contains(p: tuple[int, int, int], b: Box) -> bool:
    y, x, s = p
    return x <= b.xmin and b.xmax <= x + s and y <= b.ymin and b.ymax <= y + s


def _intersects(p: tuple[int, int, int], b: Box) -> bool:
    y, x, s = p
    return b.xmin < x + s and x < b.xmax and b.ymin < y + s and y < b.ymax


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, C) -> (H, W, channels): 1->3 replicates, 3->1 is ITU-R BT.601 luma (as PIL's `L`)."""
    if img.ndim == 2:
        img = img[..., None]
    c = img.shape[2]
    if c == channels:
        return img
    if c == 1 and channels == 3:
        return np.repeat(img, 3, axis=2)
    if c == 3 and channels == 1:
        f = img.astype(np.uint32)
        y = f[..., 0] * 299 + f[..., 1] * 587 + f[..., 2] * 114
        return ((y + 500) // 1000).astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert {c} channels to {channels}")
