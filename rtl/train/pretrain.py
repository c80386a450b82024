"""Pretraining on the corpus with Ray Train (TorchTrainer, DDP; gloo on CPU, nccl on GPU).

One worker function (`train_loop`) runs in every Ray Train worker, or in-process for `pretrain_local`
(the single-process baseline of benchmarks/train_throughput.py). Data: `CorpusDataset` + our own
global-draw samplers (see rtl/train/corpus_data.py for why not Ray Data); the global batch is
`batch_size`, split evenly across workers, so N workers follow the same sample order as 1 worker.
Optimisation: rtl.train.engine (SGD + Nesterov, linear warm-up then cosine, per-step; Goyal et al.
2017 "Accurate, Large Minibatch SGD" for warm-up with a large global batch).

Fault tolerance: every epoch, rank 0 reports a checkpoint (rtl checkpoint + optimizer/scheduler
state). Ray Train V2 restores its checkpoint manager from `storage_path/name`, and the run name is a
hash of the config without `epochs`, so re-running the same config (after a crash, or with more
epochs) resumes after the last finished epoch instead of starting over.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rtl.artifacts.checkpoint import STATE_FILE, has_weights, read_checkpoint_meta, read_state_dict
from rtl.errors import RtlError
from rtl.models.backbones import create_model
from rtl.raystart import ensure_ray  # a cluster, or a local Ray on 127.0.0.1 only (issue 17)
from rtl.train.checkpoint import load_checkpoint, save_checkpoint
from rtl.train.corpus_data import CorpusDataset, concat_tables, load_joint_dir, read_view_table
from rtl.train.engine import FitConfig, build_optimizer, build_scheduler, train_epoch, unwrap
from rtl.train.pretrain_config import PretrainConfig  # re-exported: callers import it from here
from rtl.train.samplers import DistributedShuffleSampler, WeightedDistributedSampler
from rtl.train.strategies import open_view, plan_pretrain, run_name


# ------------------------------------------------------------------------------ worker contexts
class _LocalContext:
    """In-process stand-in for the Ray Train context: world size 1, checkpoints in a local folder."""

    rank, world_size = 0, 1

    def __init__(self, state_dir: Path, on_epoch=None) -> None:
        self.latest = state_dir / "latest"
        self.on_epoch = on_epoch  # progress display (rtl.train.progress), after the checkpoint is saved

    @contextmanager
    def checkpoint_dir(self):
        yield self.latest if (self.latest / STATE_FILE).is_file() else None

    def report(self, metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        if ckpt_dir is not None:
            self.latest.parent.mkdir(parents=True, exist_ok=True)
            old = self.latest.with_name("latest.old")
            shutil.rmtree(old, ignore_errors=True)
            if self.latest.exists():
                os.replace(self.latest, old)
            shutil.copytree(ckpt_dir, self.latest)
            shutil.rmtree(old, ignore_errors=True)
        if self.on_epoch is not None:
            self.on_epoch(int(metrics["epoch"]), metrics)


class _RayContext:
    def __init__(self, run_dir: str | None = None) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.run_dir = run_dir

    @contextmanager
    def checkpoint_dir(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            # Ray registers a checkpoint when its controller polls the report; a worker that dies right
            # after uploading loses that registration, and a re-run would start over. The upload itself
            # is complete (written before report returns), so fall back to the newest one on disk.
            yield _newest_uploaded_checkpoint(self.run_dir)
            return
        with ckpt.as_directory() as d:
            yield Path(d)

    def report(self, metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)


def _newest_uploaded_checkpoint(run_dir: str | None) -> Path | None:
    """The checkpoint_* folder under a local/NFS run dir with the most finished epochs, if any."""
    if not run_dir or "://" in run_dir or not Path(run_dir).is_dir():
        return None
    best, best_epoch = None, -1
    for d in Path(run_dir).glob("checkpoint_*"):
        try:
            epoch = read_checkpoint_meta(d).epoch
        except RtlError:
            continue  # incomplete upload: never resume from it
        if epoch is not None and (d / STATE_FILE).is_file() and has_weights(d) and epoch > best_epoch:
            best, best_epoch = d, epoch
    return best


# ------------------------------------------------------------------------------ the worker loop
def build_loader(cfg: PretrainConfig, plan: dict[str, Any], rank: int, world_size: int):
    """DataLoader of this rank: corpus view (+ joint rows) with the strategy's sampler."""
    from torch.utils.data import DataLoader

    view = open_view(cfg.corpus, cfg.datasets, cfg.domains, cfg.splits)
    table = read_view_table(view)
    if cfg.joint_dir:
        joint, _ = load_joint_dir(cfg.joint_dir, first_class_id=view.num_classes, min_side=plan["min_side"],
                                  max_side=plan["max_side"])
        table = concat_tables(table, joint)
    ds = CorpusDataset(table, crop=plan["min_side"], in_channels=cfg.in_channels, train=True, seed=cfg.seed)
    n = cfg.samples_per_epoch or len(ds)
    common = dict(num_samples_per_epoch=n, rank=rank, world_size=world_size, seed=cfg.seed, with_keys=True)
    if plan["class_weights"]:
        weights = {int(k): float(v) for k, v in plan["class_weights"].items()}
        sampler = WeightedDistributedSampler(ds.class_ids, weights, **common)
    else:
        sampler = DistributedShuffleSampler(len(ds), **common)
    loader = DataLoader(ds, batch_size=cfg.batch_size // world_size, sampler=sampler,
                        num_workers=cfg.loader_workers, pin_memory=cfg.use_gpu,
                        persistent_workers=cfg.loader_workers > 0)
    return loader, sampler


def train_loop(config: dict[str, Any]) -> None:
    """Body of every training worker. `config` = {"cfg": PretrainConfig.model_dump(), "plan": ..., "local": dir?}."""
    cfg, plan = PretrainConfig(**config["cfg"]), config["plan"]
    local = config.get("local")
    ctx = _LocalContext(Path(local), config.get("on_epoch")) if local else _RayContext(config.get("run_dir"))
    torch.set_num_threads(cfg.cpus_per_worker)
    if local:
        device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    else:
        import ray.train.torch

        device = ray.train.torch.get_device()
    loader, sampler = build_loader(cfg, plan, ctx.rank, ctx.world_size)

    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    model = create_model(cfg.model, plan["num_classes"], in_channels=cfg.in_channels, weights=plan["init"])
    fit = FitConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                    warmup_epochs=cfg.warmup_epochs, device=str(device))
    start, history, state = 0, [], None
    with ctx.checkpoint_dir() as d:
        if d is not None:
            model.load_state_dict(read_state_dict(d))
            state = read_state_dict(d, file=STATE_FILE)
            history = read_checkpoint_meta(d).history
            start = int(state["epoch"])
    if local:
        model = model.to(device)
    else:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
    optimizer = build_optimizer(model, fit)
    scheduler = build_scheduler(optimizer, fit, len(loader))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None

    for epoch in range(start, min(cfg.epochs, cfg.stop_after_epoch or cfg.epochs)):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        stats = train_epoch(model, loader, optimizer, scheduler, scaler=scaler, device=device,
                            channels_last=device.type == "cuda", sync=ctx.world_size > 1)
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch, "train_loss": stats["train_loss"], "images": stats["n"],
                   "seconds": seconds, "images_per_s": stats["n"] / max(seconds, 1e-9),
                   "lr": optimizer.param_groups[0]["lr"], "world_size": ctx.world_size}
        history.append(metrics)
        tmp = None
        if ctx.rank == 0:
            tmp = Path(tempfile.mkdtemp(prefix="rtl-pretrain-"))
            meta = _meta(cfg, plan, epoch + 1, history)
            save_checkpoint(tmp / "ckpt", unwrap(model), meta)
            torch.save({"epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict()}, tmp / "ckpt" / STATE_FILE)
        try:
            ctx.report(metrics, tmp / "ckpt" if tmp else None)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        _maybe_inject_fault(cfg, epoch)


def _maybe_inject_fault(cfg: PretrainConfig, epoch: int) -> None:
    """Chaos knob for recovery tests: `extra={"fault_after_epoch": k, "fault_marker": path}` kills this
    worker process (no clean-up, like a lost node) once, after epoch k's checkpoint was reported;
    `"fault_mode": "raise"` raises instead (in-process runs, where exiting would end the caller)."""
    k, marker = cfg.extra.get("fault_after_epoch"), cfg.extra.get("fault_marker")
    if k is None or epoch != int(k) or not marker or os.path.exists(marker):
        return
    Path(marker).write_text(str(os.getpid()))
    if cfg.extra.get("fault_mode") == "raise":
        raise RuntimeError(f"injected fault after epoch {epoch}")
    os._exit(1)


def _meta(cfg: PretrainConfig, plan: dict[str, Any], epoch: int, history: list[dict]) -> dict[str, Any]:
    """meta.json of a pretrained checkpoint; `epoch` = number of finished epochs."""
    return {"corpus_version": plan["corpus_version"], "strategy": cfg.strategy, "datasets": plan["datasets"],
            "domains": cfg.domains, "class_table": plan["class_table"], "epoch": epoch, "history": history,
            "min_side": plan["min_side"], "max_side": plan["max_side"], "seed": cfg.seed,
            "class_weights": plan["class_weights"], "config": _json_cfg(cfg)}


def _json_cfg(cfg: PretrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.model_dump(), default=str))


# ------------------------------------------------------------------------------ drivers
def _export(src: Path, out: Path) -> Path:
    """Copy an epoch checkpoint to `out` as a plain rtl checkpoint (model.pt + meta.json)."""
    model, meta = load_checkpoint(src)
    return save_checkpoint(out, model, meta)


def _no_training(cfg: PretrainConfig, plan: dict[str, Any]) -> Path:
    """scratch / imagenet: the checkpoint is the initialisation itself."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, plan["num_classes"], in_channels=cfg.in_channels, weights=plan["init"])
    return save_checkpoint(cfg.out, model, _meta(cfg, plan, 0, []))


def pretrain_local(cfg: PretrainConfig, on_epoch=None) -> Path:
    """Run `train_loop` in this process (world size 1, no Ray); resumable like run_pretrain.
    `on_epoch(epoch, metrics)` is called after every epoch (progress display)."""
    plan = plan_pretrain(cfg)
    if not plan["trains"]:
        return _no_training(cfg, plan)
    state_dir = Path(cfg.resolved_storage()) / run_name(cfg, plan) / "local"
    train_loop({"cfg": cfg.model_dump(), "plan": plan, "local": str(state_dir), "on_epoch": on_epoch})
    return _export(state_dir / "latest", Path(cfg.out))


def _ensure_ray() -> None:
    ensure_ray()


def run_pretrain(cfg: PretrainConfig, on_epoch=None) -> Path:
    """Pretrain per `cfg` on Ray Train; returns the final checkpoint directory `cfg.out`.
    `on_epoch(epoch, metrics)` gets rank 0's metrics of every epoch in this (driver) process, while
    training runs (rtl.train.ray_progress: worker prints do not reach the driver)."""
    plan = plan_pretrain(cfg)
    if not plan["trains"]:
        return _no_training(cfg, plan)
    _ensure_ray()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # local: torch_loopback imports Ray (pretrain_local runs without it); rendezvous store on 127.0.0.1 (issue 17)
    from rtl.train.torch_loopback import LoopbackTorchConfig as TorchConfig

    relay = None
    if on_epoch is not None:
        from rtl.train.ray_progress import RayEpochRelay  # local: imports Ray

        relay = RayEpochRelay(on_epoch)

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(), "plan": plan,
                           "run_dir": str(Path(cfg.resolved_storage()) / run_name(cfg, plan))
                           if "://" not in cfg.resolved_storage() else None},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=run_name(cfg, plan), storage_path=cfg.resolved_storage(),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=[relay.callback] if relay else None),
    )
    from ray.train import TrainingFailedError

    try:
        if relay is not None:
            with relay:
                result = trainer.fit()
        else:
            result = trainer.fit()
    except TrainingFailedError as e:
        raise RtlError(_worker_failure_line(e, run_name(cfg, plan), cfg.resolved_storage())) from None
    if result.checkpoint is None:
        raise RtlError(f"pretraining run {run_name(cfg, plan)} produced no checkpoint")
    with result.checkpoint.as_directory() as d:
        return _export(Path(d), Path(cfg.out))


def _worker_failure_line(error: Exception, name: str, storage: str) -> str:
    """One line for a failed Ray Train run: the workers' root error (an RtlError's own message when a
    worker hit bad input) and where the full logs are."""
    failures = getattr(error, "worker_failures", None) or {}
    root = next(iter(failures.values()), error)
    while getattr(root, "cause", None) is not None and root is not root.cause:  # RayTaskError wrapping
        root = root.cause
    text = str(root).strip().splitlines()
    last = text[-1] if text else type(root).__name__
    return f"pretraining {name} failed on a worker: {last} (logs: {storage}/{name})"
