"""decode_image / fit_size / needs_patches / patch_crop / to_channels on tiny synthetic images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rtl.data.convention import Box
from rtl.data.transforms import DecodeError, decode_image, fit_size, needs_patches, patch_crop, to_channels


def _png(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ decode


def test_decode_rgb_roundtrip_and_path(tmp_path):
    a = _rgb(20, 30)
    p = tmp_path / "x.PNG"  # upper-case extension is irrelevant: content decides
    p.write_bytes(_png(Image.fromarray(a)))
    for src in (p, str(p), p.read_bytes()):
        out = decode_image(src)
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8
        assert np.array_equal(out, a)


def test_decode_gray_kept_or_replicated():
    g = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    data = _png(Image.fromarray(g))
    one = decode_image(data, keep_gray=True)
    three = decode_image(data, keep_gray=False)
    assert one.shape == (12, 10, 1) and np.array_equal(one[..., 0], g)
    assert three.shape == (12, 10, 3) and all(np.array_equal(three[..., c], g) for c in range(3))


def test_decode_exif_orientation_applied():
    a = _rgb(10, 20)  # landscape
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = decode_image(_png(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (20, 10, 3)  # now portrait


def test_decode_palette_with_and_without_transparency():
    p = Image.new("P", (8, 6))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    px = np.zeros((6, 8), np.uint8)
    px[:, 4:] = 1
    p.putdata(px.ravel().tolist())
    out = decode_image(_png(p))
    assert out.shape == (6, 8, 3)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 7]) == (0, 255, 0)
    p.info["transparency"] = 1  # index 1 fully transparent -> black after compositing
    out = decode_image(_png(p, transparency=1))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 7]) == (0, 0, 0)


def test_decode_alpha_composited_on_black():
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., :3] = 200
    a[:, :2, 3] = 255
    a[:, 2:, 3] = 0
    out = decode_image(_png(Image.fromarray(a)))
    assert out.shape == (4, 4, 3)
    assert (out[:, :2] == 200).all() and (out[:, 2:] == 0).all()
    la = np.stack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 128, np.uint8)], -1)
    out = decode_image(_png(Image.fromarray(la)))
    assert out.shape == (4, 4, 1) and abs(int(out[0, 0, 0]) - 50) <= 1


def test_decode_16bit_scaled_by_bit_depth():
    a = np.zeros((4, 4), np.uint16)
    a[0, 0] = 4095  # 12-bit camera data in a 16-bit container
    a[0, 1] = 2048
    out = decode_image(_png(Image.fromarray(a)))
    assert out.shape == (4, 4, 1) and out.dtype == np.uint8
    assert out[0, 0, 0] == 255 and abs(int(out[0, 1, 0]) - 128) <= 1 and out[1, 1, 0] == 0
    full = np.full((3, 3), 65535, np.uint16)
    assert decode_image(_png(Image.fromarray(full)))[0, 0, 0] == 255


def test_decode_cmyk_and_bilevel():
    cmyk = Image.new("CMYK", (5, 4), (0, 255, 255, 0))  # red
    out = decode_image(_png(cmyk, "JPEG", quality=100))
    assert out.shape == (4, 5, 3) and out[0, 0, 0] > 200 and out[0, 0, 1] < 60
    bw = Image.new("1", (6, 3), 1)
    out = decode_image(_png(bw))
    assert out.shape == (3, 6, 1) and (out == 255).all()


def test_decode_odd_modes_become_rgb():
    out = decode_image(_png(Image.new("YCbCr", (4, 4), (128, 128, 128)), "JPEG"))
    assert out.shape == (4, 4, 3)
    f = Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4))
    out = decode_image(_png(f, "TIFF"))
    assert out.shape == (4, 4, 1) and out[0, 0, 0] == 0 and out[3, 3, 0] == 255


@pytest.mark.parametrize("data,reason", [
    (b"", "zero-byte file"),
    (b"hello, I am a text file pretending to be a PNG", "not an image"),
])
def test_decode_bad_bytes(data, reason):
    with pytest.raises(DecodeError) as e:
        decode_image(data)
    assert e.value.reason == reason


def test_decode_truncated():
    data = _png(Image.fromarray(_rgb(64, 64)))
    with pytest.raises(DecodeError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.reason == "truncated image"


def test_decode_bomb_checked_from_header():
    data = _png(Image.new("L", (100, 100)))
    with pytest.raises(DecodeError) as e:
        decode_image(data, max_pixels=99 * 100)
    assert e.value.reason == "decompression bomb"
    assert decode_image(data, max_pixels=100 * 100).shape == (100, 100, 1)


def test_decode_missing_file(tmp_path):
    with pytest.raises(DecodeError) as e:
        decode_image(tmp_path / "nope.png")
    assert e.value.reason == "missing file"


# ------------------------------------------------------------------------------------------ fit_size


@pytest.mark.parametrize("hw,expect", [
    ((512, 384), (64, 48)),     # shrink: long side -> max, short 48 in range
    ((40, 50), (48, 60)),       # both small: upscale until short side reaches min (48/40 = 1.2)
    ((50, 52), (50, 52)),       # already fits: untouched
    ((640, 64), (64, 48)),      # elongated: 64x6.4 -> 64x6, padded to 48 wide
    ((10, 70), (48, 64)),       # wide strip: 9x64 after shrink, padded to 48 high
])
def test_fit_size_exact_shapes(hw, expect):
    out = fit_size(_rgb(*hw), 48, 64)
    assert out.shape[:2] == expect
    assert 48 <= out.shape[0] <= 64 and 48 <= out.shape[1] <= 64


def test_fit_size_pads_centred_with_zeros():
    img = np.full((100, 10, 1), 255, np.uint8)
    out = fit_size(img, 48, 64)  # -> 64 x 6, padded to 64 x 48: 21 left, 21 right
    assert out.shape == (64, 48, 1)
    cols = np.nonzero(out[32, :, 0])[0]
    assert cols[0] == 21 and cols[-1] == 26
    assert (out[:, :21] == 0).all() and (out[:, 27:] == 0).all()


def test_fit_size_keeps_gray_channels_and_aspect():
    out = fit_size(np.zeros((300, 200, 1), np.uint8), 48, 64)
    assert out.shape == (64, 48, 1)  # 64 x 42.7 -> 43 -> padded to 48
    out = fit_size(np.zeros((300, 200, 1), np.uint8), 32, 64, upscale=False)
    assert out.shape == (64, 43, 1)


# ------------------------------------------------------------------------------------------ patches


def test_needs_patches_threshold():
    assert not needs_patches(1024, 700, 224, 256, max_downscale=4.0)  # 4x exactly: shrink is fine
    assert needs_patches(1025, 700, 224, 256, max_downscale=4.0)
    assert needs_patches(300, 200, 32, 64, max_downscale=4.0)
    assert not needs_patches(2048, 1500, 224, 256)  # default: 8x exactly is fine
    assert needs_patches(2049, 1500, 224, 256)


def test_needs_patches_when_a_boxed_defect_would_vanish():
    small = [Box(100, 100, 124, 120, "spot")]  # 20 px short side
    big = [Box(100, 100, 400, 300, "crack")]
    # 1024 px -> 256: 4x shrink leaves the 20 px spot 5 px wide (< 6): patch; the big crack survives
    assert needs_patches(1024, 800, 224, 256, boxes=small)
    assert not needs_patches(1024, 800, 224, 256, boxes=big)
    assert not needs_patches(1024, 800, 224, 256, boxes=small, min_defect_px=0)  # box trigger off
    assert not needs_patches(200, 200, 224, 256, boxes=small)  # no shrink at all


def test_patch_crop_boxes_whole_inside_their_patch():
    img = _rgb(300, 400)
    boxes = [Box(0, 0, 10, 12, "a"), Box(380, 280, 400, 300, "b"), Box(150, 100, 200, 160, "c")]
    pieces = patch_crop(img, boxes, size=64, max_patches=8, seed=0)
    assert len(pieces) <= 8
    for patch, _ in pieces:
        assert patch.shape == (64, 64, 3)
    for b in boxes:  # each box appears whole (64 >= its size) in some patch, with matching pixels
        hits = [(p, bb) for p, bl in pieces for bb in bl
                if bb.label == b.label and bb.xmax - bb.xmin == b.xmax - b.xmin
                and bb.ymax - bb.ymin == b.ymax - b.ymin]
        assert hits, b
        p, bb = hits[0]
        assert np.array_equal(p[bb.ymin:bb.ymax, bb.xmin:bb.xmax], img[b.ymin:b.ymax, b.xmin:b.xmax])
    bg = [p for p, bl in pieces if not bl]
    assert 1 <= len(bg) <= 3  # background patches, never more than defect patches


def test_patch_crop_without_boxes_is_seeded_grid():
    img = _rgb(200, 300)
    a = patch_crop(img, [], size=64, max_patches=5, seed=1)
    b = patch_crop(img, [], size=64, max_patches=5, seed=1)
    c = patch_crop(img, [], size=64, max_patches=5, seed=2)
    assert len(a) == 5 and all(p.shape == (64, 64, 3) and bl == [] for p, bl in a)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))
    assert len(patch_crop(img, [], size=64, max_patches=100, seed=0)) == 4 * 5  # full cover grid


def test_patch_crop_small_image_padded():
    pieces = patch_crop(_rgb(30, 100), [Box(5, 5, 15, 15, "x")], size=64, max_patches=2, seed=0)
    p, bl = pieces[0]
    assert p.shape == (64, 64, 3) and bl and (p[30:] == 0).all()


# ------------------------------------------------------------------------------------------ channels


def test_to_channels():
    g = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    rgb = to_channels(g, 3)
    assert rgb.shape == (2, 3, 3) and np.array_equal(rgb[..., 2], g[..., 0])
    back = to_channels(rgb, 1)
    assert np.array_equal(back, g)
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert to_channels(red, 1)[0, 0, 0] == round(0.299 * 255)
    assert to_channels(g, 1) is g
