"""A driver killed between a trial's new checkpoint and Tune's next state snapshot leaves a state naming
a deleted checkpoint (num_to_keep=1); `Tuner.restore` then errored that trial. The driver fills the name
in from the newest checkpoint the trial persisted before restoring (rtl.sweep.search)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rtl.sweep.search import repair_lagging_checkpoints


def test_a_deleted_checkpoint_named_by_the_state_is_filled_from_the_newest(tmp_path: Path, ray_session) -> None:
    from ray import tune

    def _trainable(config: dict) -> None:  # a closure: Ray pickles it by value (tests/ is not importable there)
        import tempfile

        from ray import tune

        if tune.get_checkpoint() is not None:  # restored: finish
            tune.report({"step": 10})
            return
        for step in range(3):
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"step": step}))
                tune.report({"step": step}, checkpoint=tune.Checkpoint.from_directory(d))
        raise RuntimeError("stopped before the end")  # an unfinished trial that Tuner.restore resumes

    tuner = tune.Tuner(_trainable, param_space={}, tune_config=tune.TuneConfig(num_samples=1),
                       run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path),
                                                 checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    assert tuner.fit().errors  # the trial is unfinished: restore will resume it from its checkpoint
    exp = tmp_path / "exp"
    [trial_dir] = [p for p in exp.iterdir() if p.is_dir()]
    [named] = [p for p in trial_dir.iterdir() if p.name.startswith("checkpoint_")]
    assert repair_lagging_checkpoints(str(exp)) == []  # nothing missing: nothing touched

    # the kill: the trial persisted a newer checkpoint and Tune deleted the one its state still names
    newer = trial_dir / "checkpoint_000009"
    shutil.copytree(named, newer)
    (newer / "state.json").write_text(json.dumps({"step": 9}))
    shutil.rmtree(named)

    assert repair_lagging_checkpoints(str(exp)) == [str(named)]
    assert json.loads((named / "state.json").read_text()) == {"step": 9}
    assert os.path.samefile(named / "state.json", newer / "state.json")  # hard link, no copy
    assert tune.Tuner.can_restore(str(exp))
    res = tune.Tuner.restore(str(exp), trainable=_trainable, resume_errored=True).fit()
    assert not res.errors
