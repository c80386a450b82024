"""Per-epoch progress of `rtl pretrain` (issue 11 item 6): a line per epoch off a terminal, a bar on one,
`--quiet` off, and Ray Train workers' epochs reaching the driver (whose Ray runs with log_to_driver off).
`rtl finetune`'s progress is tested in tests/test_deliver.py (test_finetune_shows_per_epoch_progress)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from test_pretrain import write_corpus

from rtl.cli import main
from rtl.train.progress import EpochProgress

ARGS = ["--backbone", "small_cnn", "--epochs", "1", "--batch-size", "8"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_epoch_lines_off_a_terminal_and_a_bar_on_one() -> None:
    log = io.StringIO()
    show = EpochProgress(3, desc="pretrain", stream=log)
    for epoch, loss in ((1, 2.5), (2, 1.25)):  # a resumed run: epoch 0 was done before
        assert show(epoch, {"epoch": epoch, "train_loss": loss, "images_per_s": 100.0, "lr": 0.1}) is False
    show.close()
    assert log.getvalue().splitlines() == ["pretrain epoch 2/3 train_loss 2.5000 images_per_s 100.0000",
                                           "pretrain epoch 3/3 train_loss 1.2500 images_per_s 100.0000"]
    tty = _Tty()
    bar = EpochProgress(3, desc="pretrain", stream=tty)
    for epoch in range(3):
        bar(epoch, {"train_loss": 1.0 / (epoch + 1)})
    bar.close()
    out = tty.getvalue()
    assert "pretrain" in out and "3/3" in out and "train_loss=0.3333" in out and "pretrain epoch" not in out


def test_ray_workers_epoch_lines_reach_the_driver(tmp_path: Path) -> None:
    """`rtl pretrain --workers 2` as a user runs it: rank 0's epoch line is on the command's stderr (not
    stdout, which keeps the one result line), with the loss the checkpoint recorded."""
    corpus = write_corpus(tmp_path / "corpus")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    r = subprocess.run([sys.executable, "-m", "rtl.cli", "pretrain", "--corpus", str(corpus), *ARGS,
                        "--workers", "2", "--out", str(tmp_path / "ckpt"), "--storage", str(tmp_path / "runs")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("pretrain epoch")]
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    assert meta["history"][0]["world_size"] == 2
    assert lines == [f"pretrain epoch 1/1 train_loss {meta['history'][0]['train_loss']:.4f} "
                     f"images_per_s {meta['history'][0]['images_per_s']:.4f}"]
    assert "epoch 1/1" not in r.stdout and "checkpoint" in r.stdout


def test_quiet_turns_progress_off(tmp_path: Path, ray_session, capsys) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    common = ["pretrain", "--corpus", str(corpus), *ARGS, "--storage", str(tmp_path / "runs")]
    assert main([*common, "--workers", "1", "--out", str(tmp_path / "ray"), "--quiet"]) == 0
    cap = capsys.readouterr()
    assert "epoch" not in cap.err and "checkpoint" in cap.out
    # the in-process path (--local) shows progress the same way, and is quiet the same way
    assert main([*common, "--local", "--seed", "1", "--out", str(tmp_path / "local")]) == 0
    assert [ln.split(" train_loss")[0] for ln in capsys.readouterr().err.splitlines()
            if "epoch" in ln] == ["pretrain epoch 1/1"]
    assert main([*common, "--local", "--seed", "2", "--out", str(tmp_path / "local2"), "--quiet"]) == 0
    assert "epoch" not in capsys.readouterr().err
