"""Ground truth, end to end and small: synth datasets -> corpus -> pretrained source model -> `rtl select`.

A held-out pcb target (a different dataset from every source, with its own colour/pitch/noise draw) must
put most of its importance mass on the pcb sources. The full-size version with precision@3 is
benchmarks/selection_precision.py (docs/measurements/selection.md).
"""

from __future__ import annotations

import pytest

from rtl.data.synth import Spec, generate_dataset

SOURCES = [
    Spec("pcb_a", "pcb", {"ok": 24, "short": 12}, (64, 128)),
    Spec("pcb_b", "pcb", {"ok": 24, "open": 12}, (64, 128)),
    Spec("film_a", "film", {"ok": 24, "bubble": 12}, (64, 128)),
    Spec("solar_a", "solar", {"ok": 24, "crack": 12}, (64, 128)),
    Spec("display_a", "display", {"ok": 24, "dead_pixel": 12}, (64, 128)),
]
TARGET = Spec("target_pcb", "pcb", {"ok": 0, "short": 0, "open": 0}, (64, 128), target=True,
              split_counts=(4, 2, 2), related=("pcb_a", "pcb_b"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_session):
    from rtl.data.corpus import build_corpus
    from rtl.train.pretrain import PretrainConfig, pretrain_local

    root = tmp_path_factory.mktemp("gt")
    dirs = [root / "sources" / s.name for s in SOURCES]
    for spec, d in zip(SOURCES, dirs):
        generate_dataset(spec, d, "demo", 0)
    generate_dataset(TARGET, root / TARGET.name, "demo", 0)
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
    rc = main(["select", "--target", str(root / TARGET.name), "--model", str(ckpt), "--corpus",
               str(root / "corpus"), "--temperature", "2.0", "--out", str(out)])
    assert rc == 0, capsys.readouterr().out
    w = read_weights(out)
    assert next(iter(w.datasets)) in TARGET.related  # the top source dataset is a related one
    assert w.domains["pcb"] > 0.5  # most of the mass on the target's industry (5 industries: 0.2 by chance)
    assert w.suggested_datasets[0] in TARGET.related
