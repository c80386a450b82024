"""`rtl predict MODEL IMAGES --out preds.csv`: run a model folder (or `models:/name@alias`) on new images.

Input: a folder of images (recursive), a dataset in the rtl convention (labels kept as `label`), or a CSV
with an `image` (or `path`) column, paths relative to the CSV. Every image is decoded and fit exactly as in
training (`rtl.data.transforms.decode_fit`), then goes through the model folder's own preprocessing
(`rtl.deliver.model.prepare_image`: the evaluation path of training). An image that cannot be decoded is
listed in `<out>.rejects.csv` (path, reason) and the rest are predicted.

Engines: `local` is a plain batched PyTorch loop in this process (no start-up cost: right for a few
hundred images); `ray` is Ray Data batch inference, `map_batches` over an actor pool where every actor
holds the model once and decodes + predicts its batches (decoding is the bottleneck on CPU, so it scales
with cores; `--gpus` GPUs shared by the actors; on a cluster the image paths must be readable on every
node, e.g. a shared mount). On CPU the driver predicts too, from the front of the list while Ray and its
actors start (seconds of fixed cost), Ray Data from the back. `auto` picks Ray when `--address` or `--gpus` is given or
there are at least `RAY_MIN_IMAGES` (10 000) images (below that, starting Ray costs more than it saves).
"""

from __future__ import annotations

import csv
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtl.data.convention import load_dataset
from rtl.data.transforms import DecodeError, decode_fit
from rtl.deliver.metrics import inspection_metrics
from rtl.deliver.model import LoadedModel, build_model, prepare_image
from rtl.errors import RtlError, RtlRuntimeError
from rtl.raystart import ensure_ray

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm"}
RAY_MIN_IMAGES = 10_000  # `auto` below this: a fresh local Ray's fixed cost exceeds its gain on a few
# cores (docs/measurements/predict.md: 2000 images took 2-3x longer with Ray than in-process)


@dataclass
class Item:
    path: str  # as shown in the output (relative to the input when it was a folder / dataset / CSV)
    file: str  # absolute path to read
    label: str | None = None


@dataclass
class Predictions:
    items: list[Item]
    probs: np.ndarray  # (N, K) of the accepted items, in `items` order
    rejects: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    engine: str = "local"
    seconds: float = 0.0
    by_driver: int = 0  # Ray engine: images the driver predicted itself while Ray and its actors started


def collect_inputs(src: str | Path, *, split: str | None = None) -> list[Item]:
    """Items from a folder, a convention dataset (dataset.yaml present) or a CSV of paths. Raises RtlError."""
    src = Path(src)
    if src.is_file() and src.suffix.lower() == ".csv":
        items = _from_csv(src)
    elif (src / "dataset.yaml").is_file():
        info = load_dataset(src)
        recs = info.split(split) if split else list(info.records)
        items = [Item(r.path, str((info.root / r.path).resolve()), r.label) for r in recs]
    elif src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        items = [Item(p.relative_to(src).as_posix(), str(p.resolve())) for p in files]
    elif not src.exists():
        raise RtlError(f"{src}: no such folder or file")
    else:
        raise RtlError(f"{src}: expected a folder of images, a dataset folder or a .csv of paths")
    if not items:
        raise RtlError(f"{src}: no images found" + (f" in split {split!r}" if split else ""))
    return items


def _from_csv(path: Path) -> list[Item]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RtlError(f"{path}: unreadable CSV ({type(e).__name__})") from None
    if not rows:
        return []
    col = next((c for c in ("image", "path", "file") if c in rows[0]), None)
    if col is None:
        raise RtlError(f"{path}: needs an 'image' (or 'path') column, has {', '.join(rows[0])}")
    out = []
    for r in rows:
        p = (r.get(col) or "").strip()
        if p:
            f = Path(p) if os.path.isabs(p) else path.parent / p
            out.append(Item(p, str(f.resolve()), r.get("label") or None))
    return out


def _decode_batch(files: list[str], pre: dict[str, Any]) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
    """-> (indices that decoded, (B, C, S, S) inputs, index -> reject reason)."""
    ok, xs, bad = [], [], {}
    for i, f in enumerate(files):
        try:
            # decode_fit: the decode + fit of training (TargetDataset) and corpus build; prepare_image's own
            # fit_size then leaves the image as it is (already within the sides)
            img = decode_fit(f, int(pre["min_side"]), int(pre["max_side"]), keep_gray=True)
            xs.append(prepare_image(img, pre))
            ok.append(i)
        except DecodeError as e:
            bad[i] = e.reason
        except (OSError, ValueError) as e:
            bad[i] = f"unreadable ({type(e).__name__})"
    return ok, (torch.stack(xs) if xs else None), bad


def _predict_local(lm: LoadedModel, items: list[Item], batch_size: int) -> tuple[np.ndarray, dict[int, str]]:
    k = len(lm.classes)
    probs = np.full((len(items), k), np.nan, dtype=np.float32)
    rejects: dict[int, str] = {}
    for s in range(0, len(items), batch_size):
        ok, x, bad = _decode_batch([it.file for it in items[s:s + batch_size]], lm.preprocess)
        rejects.update({s + i: r for i, r in bad.items()})
        if x is not None:
            probs[[s + i for i in ok]] = lm.predict_proba(x).numpy()  # (B, K)
    return probs, rejects


class _RayPredictor:
    """Ray Data actor: builds the network once from (meta, state), then decodes + predicts batches."""

    def __init__(self, meta: dict[str, Any], state: dict[str, torch.Tensor], device: str = "cpu") -> None:
        torch.set_num_threads(1)
        self.device = torch.device(device)
        self.model = build_model(meta, state).to(self.device)
        self.pre, self.k = meta["preprocess"], int(meta["num_classes"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        files = [str(f) for f in batch["file"]]
        ok, x, bad = _decode_batch(files, self.pre)
        probs = np.full((len(files), self.k), np.nan, dtype=np.float32)
        if x is not None:
            with torch.no_grad():
                probs[ok] = torch.softmax(self.model(x.to(self.device)).float(), 1).cpu().numpy()
        out = {"i": np.asarray(batch["i"]), "error": np.asarray([bad.get(j, "") for j in range(len(files))])}
        for c in range(self.k):
            out[f"p{c}"] = probs[:, c]
        return out


class _Shared:
    """Results of one Ray predict run, filled by the driver's own loop and by the Ray Data batches."""

    def __init__(self, n: int, k: int) -> None:
        self.probs = np.full((n, k), np.nan, dtype=np.float32)
        self.done = np.zeros(n, dtype=bool)
        self.rejects: dict[int, str] = {}
        self.lock = threading.Lock()
        self.by_driver = 0

    def put(self, idx: np.ndarray, probs: np.ndarray, rejects: dict[int, str]) -> None:
        with self.lock:
            self.probs[idx] = probs
            self.rejects.update(rejects)
            self.done[idx] = True

    def all_done(self) -> bool:
        return bool(self.done.all())


def _driver_share(lm: LoadedModel, items: list[Item], batch_size: int, shared: _Shared,
                  stop: threading.Event) -> None:
    """The driver predicts from the front while Ray starts and its actors load the model (seconds of fixed
    cost on a fresh local Ray), skipping what Ray did, until everything is done or `stop` is set."""
    s = 0
    while s < len(items) and not stop.is_set():
        idx = [i for i in range(s, min(len(items), s + batch_size)) if not shared.done[i]]
        s += batch_size
        if not idx:
            continue
        ok, x, bad = _decode_batch([items[i].file for i in idx], lm.preprocess)
        probs = np.full((len(idx), len(lm.classes)), np.nan, dtype=np.float32)
        if x is not None:
            probs[ok] = lm.predict_proba(x).numpy()  # (B, K)
        shared.put(np.asarray(idx), probs, {idx[j]: r for j, r in bad.items()})
        shared.by_driver += len(idx)


def _predict_ray(lm: LoadedModel, items: list[Item], batch_size: int, *, address: str | None, gpus: float,
                 actors: int | None, driver_share: bool = True) -> tuple[np.ndarray, dict[int, str], int]:
    """Ray Data batch inference (actor pool), with the driver's share (`_driver_share`) -> (probs,
    rejects, images the driver predicted).

    The driver works from the front of `items` in a thread while `ensure_ray` starts Ray and while the
    actors start (each imports torch and builds the model: seconds); Ray Data goes through `items` from
    the back, one batch per block, so its results reach the driver's skip list batch by batch. They meet
    somewhere in the middle and the Ray Data iteration is abandoned once every image has a result
    (batches in flight near the meeting point are the only waste). Torch threads: one per actor and one
    in the driver, and one actor fewer than CPUs (unless `actors` is given), so nothing oversubscribes.
    """
    import ray

    k = len(lm.classes)
    shared = _Shared(len(items), k)
    stop = threading.Event()
    threads = torch.get_num_threads()
    worker = None
    if driver_share and not gpus:
        torch.set_num_threads(1)
        worker = threading.Thread(target=_driver_share, args=(lm, items, batch_size, shared, stop),
                                  name="rtl-predict-driver", daemon=True)
        worker.start()
    try:
        ensure_ray(address)  # a cluster, or a local Ray on 127.0.0.1 only (issue 17)
        if not shared.all_done():
            cpus = int(ray.available_resources().get("CPU", 1))
            # the sharing driver keeps one CPU busy: one actor fewer, so 2 CPUs run 1 actor + the driver
            free = cpus - 1 if worker is not None and cpus > 1 else cpus
            n_act = actors or max(1, min(free, len(items) // batch_size + 1) if not gpus else int(gpus))
            state = {name: v.detach().cpu() for name, v in lm.model.state_dict().items()}
            rows = [{"i": i, "file": it.file} for i, it in enumerate(items)][::-1]  # from the back
            # with the driver sharing, one batch per block: results (and the driver's skip list) then
            # arrive batch by batch, not once per big block the driver would redo meanwhile
            n_blocks = -(-len(items) // batch_size) if worker is not None else min(len(items) // batch_size + 1,
                                                                                   4 * n_act)
            ds = ray.data.from_items(rows, override_num_blocks=max(1, n_blocks))
            ds = ds.map_batches(_RayPredictor, fn_constructor_kwargs={"meta": lm.meta, "state": state,
                                                                       "device": "cuda" if gpus else "cpu"},
                                batch_size=batch_size, concurrency=n_act, num_cpus=0 if gpus else 1,
                                num_gpus=(gpus / n_act) if gpus else 0)
            it = ds.iter_batches(batch_format="numpy", batch_size=None)
            try:
                for b in it:
                    idx = b["i"].astype(np.int64)
                    shared.put(idx, np.stack([b[f"p{c}"] for c in range(k)], 1),
                               {int(i): str(e) for i, e in zip(idx, b["error"]) if e})
                    if shared.all_done():
                        break  # the driver did the rest: stop the actors
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
    finally:
        stop.set()
        if worker is not None:
            worker.join()
        torch.set_num_threads(threads)
    if not shared.all_done():  # cannot happen unless Ray lost batches; never return holes silently
        raise RtlRuntimeError(f"Ray predict returned no result for {int((~shared.done).sum())} image(s)")
    return shared.probs, shared.rejects, shared.by_driver


def predict(lm: LoadedModel, items: list[Item], *, engine: str = "auto", batch_size: int = 64,
            address: str | None = None, gpus: float = 0, actors: int | None = None,
            driver_share: bool = True) -> Predictions:
    """Probabilities for every decodable item; undecodable ones become rejects.

    `driver_share` (Ray engine, CPU): the driver predicts too while Ray and its actors start (see
    `_predict_ray`); False leaves every image to the Ray Data actors."""
    if engine not in ("auto", "local", "ray"):
        raise RtlError(f"--engine must be auto, local or ray, got {engine!r}")
    if engine == "auto":
        engine = "ray" if address or gpus or len(items) >= RAY_MIN_IMAGES else "local"
    t0 = time.perf_counter()
    by_driver = 0
    if engine == "ray":
        probs, rej, by_driver = _predict_ray(lm, items, batch_size, address=address, gpus=gpus, actors=actors,
                                             driver_share=driver_share)
    else:
        probs, rej = _predict_local(lm, items, batch_size)
    secs = time.perf_counter() - t0
    keep = [i for i in range(len(items)) if i not in rej]
    return Predictions([items[i] for i in keep], probs[keep], [(items[i].path, rej[i]) for i in sorted(rej)],
                       engine, secs, by_driver)


def to_frame(pred: Predictions, classes: list[str], ok_class: str | None) -> Any:
    """pandas DataFrame: path, [label], pred, score, p_<class>..., [defect_score]."""
    import pandas as pd

    p = pred.probs
    df = pd.DataFrame({"path": [it.path for it in pred.items]})
    if any(it.label is not None for it in pred.items):
        df["label"] = [it.label for it in pred.items]
    arg = p.argmax(1) if len(p) else np.zeros(0, np.int64)
    df["pred"] = [classes[i] for i in arg]
    df["score"] = p.max(1) if len(p) else np.zeros(0)
    for c, name in enumerate(classes):
        df[f"p_{name}"] = p[:, c]
    if ok_class is not None:
        df["defect_score"] = 1.0 - p[:, classes.index(ok_class)]
    return df


def write_outputs(df: Any, rejects: list[tuple[str, str]], out: str | Path) -> tuple[Path, Path | None]:
    """Write predictions (.csv or .parquet by extension) and `<out>.rejects.csv`; atomic replace."""
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise RtlError(f"--out {out}: use a .csv or .parquet file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        df.to_parquet(tmp, index=False) if out.suffix.lower() == ".parquet" else df.to_csv(tmp, index=False)
        os.replace(tmp, out)
        rej_path = out.with_name(out.stem + ".rejects.csv")
        if rejects:
            with open(rej_path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "reason"])
                w.writerows(rejects)
        elif rej_path.exists():
            rej_path.unlink()  # a stale list from an earlier run would be misleading
    except OSError as e:
        raise RtlError(f"cannot write {out}: {e.strerror or e}") from None
    return out, (rej_path if rejects else None)


def labelled_metrics(pred: Predictions, classes: list[str], ok_class: str | None) -> dict[str, float] | None:
    """Inspection metrics when every accepted item has a known label of the model's classes."""
    labels = [it.label for it in pred.items]
    if not labels or any(lb not in classes for lb in labels):
        return None
    y = np.asarray([classes.index(lb) for lb in labels])
    return inspection_metrics(y, pred.probs, classes, ok_class)
