"""`rtl predict --engine ray` with the driver's share (issue 11 item 3): while Ray and its actors start, the
driver predicts from the front and Ray Data from the back. Whoever predicts which image, every image gets
exactly the probabilities the in-process loop gives, rejects included, and nothing is left out."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from rtl.deliver import predict as P
from rtl.deliver.model import load_model_dir, save_model_dir
from rtl.models.backbones import create_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("share")
    torch.manual_seed(0)
    mdir = root / "model"
    save_model_dir(mdir, create_model("small_cnn", 3), classes=["ok", "a", "b"], min_side=32, max_side=40)
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        arr = rng.integers(0, 256, (int(rng.integers(40, 120)), int(rng.integers(40, 120)), 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr if i % 2 else arr[..., 0]).save(buf, format="JPEG" if i % 3 else "PNG")
        (imgs / f"{i:03d}.{'jpg' if i % 3 else 'png'}").write_bytes(buf.getvalue())
    (imgs / "bad.png").write_bytes(b"not an image")
    lm = load_model_dir(mdir)
    items = P.collect_inputs(imgs)
    return lm, items, P.predict(lm, items, engine="local", batch_size=4)


def _ray(lm, items, monkeypatch, *, wait_for: str) -> P.Predictions:
    """Ray engine where Ray 'starts' only once the driver has done nothing / one batch / everything."""
    real_share, real_ensure = P._driver_share, P.ensure_ray
    first, finished = threading.Event(), threading.Event()

    def share(lm_, items_, bs, shared, stop):
        real_put = shared.put

        def put(*a):
            real_put(*a)
            if threading.current_thread().name == "rtl-predict-driver":  # not the Ray batches
                first.set()
                if wait_for == "one batch":
                    stop.wait(timeout=60)  # deterministic: Ray is "up" right after the driver's first batch

        shared.put = put
        try:
            real_share(lm_, items_, bs, shared, stop)
        finally:
            finished.set()

    def ensure(address=None):
        if wait_for == "one batch":
            first.wait(timeout=60)
        elif wait_for == "everything":
            finished.wait(timeout=60)
        return real_ensure(address)

    with monkeypatch.context() as mp:
        mp.setattr(P, "_driver_share", share)
        mp.setattr(P, "ensure_ray", ensure)
        return P.predict(lm, items, engine="ray", batch_size=4, actors=2, driver_share=wait_for != "nothing")


@pytest.mark.parametrize("wait_for", ["nothing", "one batch", "everything"])
def test_same_predictions_whoever_predicts(setup, monkeypatch, ray_session, wait_for):
    lm, items, local = setup
    threads = torch.get_num_threads()
    got = _ray(lm, items, monkeypatch, wait_for=wait_for)
    assert got.engine == "ray"
    assert [i.path for i in got.items] == [i.path for i in local.items]
    np.testing.assert_allclose(got.probs, local.probs, atol=1e-6)
    assert got.rejects == local.rejects == [("bad.png", local.rejects[0][1])]
    n = len(items)
    expect = {"nothing": (0, 0), "one batch": (4, 4), "everything": (n, n)}[wait_for]
    assert expect[0] <= got.by_driver <= expect[1]
    assert torch.get_num_threads() == threads  # the driver's 1-thread setting is undone
