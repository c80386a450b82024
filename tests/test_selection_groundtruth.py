"""Ground truth, end to end and small: synth datasets -> corpus -> pretrained source model -> `rtl select`.

A held-out pcb target (a different dataset from every source, with its own colour/pitch/noise draw) must
put most of its importance mass on the pcb sources. The full-size version with precision@3 is
benchmarks/selection_precision.py (docs/measurements/selection.md).
"""

from __future__ import annotations

import pytest

SIDES = (64, 128)
SOURCES = {  # name -> (industry, images per class)
    "pcb_a": ("pcb", {"ok": 24, "short": 12}),
    "pcb_b": ("pcb", {"ok": 24, "open": 12}),
    "film_a": ("film", {"ok": 24, "bubble": 12}),
    "solar_a": ("solar", {"ok": 24, "crack": 12}),
    "display_a": ("display", {"ok": 24, "dead_pixel": 12}),
}
TARGET, RELATED = "target_pcb", ("pcb_a", "pcb_b")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_session, make_dataset):
    from rtl.data.corpus import build_corpus
    from rtl.train.pretrain import PretrainConfig, pretrain_local

    root = tmp_path_factory.mktemp("gt")
    dirs = [make_dataset(root / "sources" / name, name, industry=industry, per_class=counts, sides=SIDES)
            for name, (industry, counts) in SOURCES.items()]
    make_dataset(root / TARGET, TARGET, classes=("ok", "short", "open"), per_split=(4, 2, 2), sides=SIDES)
    build_corpus(dirs, root / "corpus", min_side=32, max_side=40, cap=None, progress=False)
    ckpt = pretrain_local(PretrainConfig(corpus=str(root / "corpus"), strategy="source", model="small_cnn",
                                         out=str(root / "source"), epochs=6, batch_size=32, lr=0.05,
                                         warmup_epochs=1.0, seed=0))
    return root, ckpt


def test_heldout_target_puts_importance_mass_on_its_industry(trained, capsys) -> None:
    from rtl.cli import main
    from rtl.select.importance import read_weights

    root, ckpt = trained
    out = root / "w.json"
    rc = main(["select", "weights", "--target", str(root / TARGET), "--checkpoint", str(ckpt), "--corpus",
               str(root / "corpus"), "--temperature", "2.0", "--out", str(out)])
    assert rc == 0, capsys.readouterr().out
    w = read_weights(out)
    assert next(iter(w.datasets)) in RELATED  # the top source dataset is a related one
    assert w.domains["pcb"] > 0.5  # most of the mass on the target's industry (5 industries: 0.2 by chance)
    assert w.suggested_datasets[0] in RELATED
