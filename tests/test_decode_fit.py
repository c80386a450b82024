"""`decode_fit` (issue 13): the one decode + fit of corpus build, fine-tuning data and `rtl predict`.

It must give what `fit_size(decode_image(...))` gives: the same shape always, the same pixels except for
JPEGs decoded at reduced scale (then within a small tolerance), and the same `DecodeError` reasons.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rtl.data.transforms import DecodeError, decode_fit, decode_image, fit_size, open_image, oriented_size


def _texture(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients + mild noise: what an inspection photo looks like to a codec."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 23.0 + seed) * np.cos(yy / 31.0) + 0.2 * (xx - w / 2)
    img = base[..., None] + rng.normal(0, 4, (h, w, c))
    out = np.clip(img, 0, 255).astype(np.uint8)
    return out[..., 0] if c == 1 else out


def _enc(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _exif_rotated_jpeg(arr: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _enc(arr, "JPEG", quality=92, exif=exif.tobytes())


@pytest.mark.parametrize("sides", [(32, 40), (64, 72), (224, 256)])
def test_same_pixels_as_two_steps_except_scaled_jpeg(sides):
    lo, hi = sides
    rgba = np.dstack([_texture(90, 70, 3, 1), np.full((90, 70), 128, np.uint8)])
    cases = {
        "png rgb": _enc(_texture(260, 230, 3), "PNG"),
        "png gray": _enc(_texture(50, 300, 1, 2), "PNG"),
        "png rgba": _enc(rgba, "PNG"),
        "palette": _enc(np.asarray(Image.fromarray(_texture(120, 80, 3, 3)).quantize(16).convert("RGB")), "GIF"),
        "16-bit": _enc((_texture(64, 64, 1, 4).astype(np.uint16) * 16), "PNG"),
        "small jpeg": _enc(_texture(20, 30, 3, 5), "JPEG"),
        "jpeg, < 2x shrink": _enc(_texture(hi * 3 // 2, hi + 5, 3, 6), "JPEG"),
        "tiff": _enc(_texture(200, 100, 3, 7), "TIFF"),
    }
    for name, data in cases.items():
        want = fit_size(decode_image(data), lo, hi)
        got = decode_fit(data, lo, hi)
        assert got.shape == want.shape and got.dtype == np.uint8, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        np.testing.assert_array_equal(decode_fit(data, lo, hi, draft=False), want, err_msg=name)


@pytest.mark.parametrize("shape", [(250, 230, 3), (300, 210, 1), (1200, 900, 3)])
def test_large_jpeg_decoded_at_reduced_scale_stays_close(shape):
    """A JPEG far larger than the fit is decoded by libjpeg at 1/2..1/8 scale: same shape, pixels within
    half a grey level on average (a few at most) of full decode + resize."""
    h, w, c = shape
    data = _enc(_texture(h, w, c, 8), "JPEG", quality=90)
    im = open_image(data)
    for lo, hi in ((32, 40), (64, 72)):
        want = fit_size(decode_image(data), lo, hi)
        got = decode_fit(data, lo, hi)
        assert got.shape == want.shape
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.mean() < 0.75 and diff.max() <= 6, (lo, diff.mean(), diff.max())
    assert oriented_size(im) == (h, w)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotation_with_reduced_scale(orientation):
    """EXIF-rotated JPEGs: the reduced-scale decode is asked for the stored orientation's size, so the
    result has the shape (and content) of rotate-then-fit."""
    arr = _texture(400, 260, 3, 9)
    data = _exif_rotated_jpeg(arr, orientation)
    want = fit_size(decode_image(data), 64, 72)
    got = decode_fit(data, 64, 72)
    assert got.shape == want.shape
    assert (want.shape[0] > want.shape[1]) == (orientation == 3)  # 6 and 8 turn the tall image wide
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 0.75
    assert oriented_size(open_image(data)) == decode_image(data).shape[:2]


def test_same_errors_as_decode_image():
    jpeg = _enc(_texture(400, 400, 3), "JPEG")
    cases = {b"": "zero-byte file", b"hello": "not an image", jpeg[: len(jpeg) // 3]: "truncated image"}
    for data, reason in cases.items():
        for fn in (lambda d: decode_image(d), lambda d: decode_fit(d, 32, 40)):
            with pytest.raises(DecodeError) as e:
                fn(data)
            assert e.value.reason == reason
    with pytest.raises(DecodeError) as e:
        decode_fit(jpeg, 32, 40, max_pixels=1000)
    assert e.value.reason == "decompression bomb"
    with pytest.raises(DecodeError) as e:
        decode_fit("/nonexistent/x.png", 32, 40)
    assert e.value.reason == "missing file"
    with pytest.raises(ValueError):
        decode_fit(jpeg, 40, 32)


def test_keep_gray_and_rgb():
    data = _enc(_texture(300, 300, 1), "JPEG")
    assert decode_fit(data, 32, 40).shape == (40, 40, 1)
    rgb = decode_fit(data, 32, 40, keep_gray=False)
    assert rgb.shape == (40, 40, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
