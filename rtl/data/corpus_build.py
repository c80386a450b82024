"""Build a corpus: dataset folders -> undersampled, decoded, size-normalised Parquet shards + manifest.

Pipeline (label table first, pixels last):
1. `check_dataset` each folder (labels, splits, boxes; rows it drops become manifest rejects).
2. Class table: existing corpus / given table first, new (dataset, label) pairs appended (never renumbered).
3. `undersample` per class from the label table, so dropped images are never decoded.
   Ray engine: steps 1-3 run in a thread while Ray starts (or is joined), so a build pays max(scan, Ray
   start), and the driver decodes the first images itself until Ray is up (`_head_start`).
4. Decode: the kept images are cut into *units* (~6 per CPU for balance; up to 1024 small images or
   ~32 MB of output pixels each); each unit is one call of `_process_unit`, which decodes
   (`decode_image`), fits (`fit_size`) or patches (`patch_crop`) its images and writes its own Parquet
   shard, returning only small metadata (rejects, sizes, row hashes). Pixels therefore never travel
   through the object store or the driver, and the driver's memory stays flat in the number of images.
   Images not kept only get a header read (for the "before" size histogram), spread over the same units.
   Engines (`engine=`, `rtl corpus build --engine`): `ray` runs each unit as a 1-CPU Ray task (a cluster,
   or a local Ray); `local` runs the same units in a process pool on this machine, no Ray
   (`rtl.data.corpus_local`); `auto` is `ray` when a Ray is addressed or already running, else `local`
   (a fresh local Ray's start costs more than it saves on one machine: docs/measurements/corpus.md).
   The corpus (rows, version, rejects) is the same whichever engine built it.
5. Manifest: class table, counts, histograms, rejects, timings and a content hash (version) over the
   rows + class table. Shards are written under `out/.building-*` and moved into place only at the end;
   manifest.json is written last (atomically), so an interrupted build never looks like a corpus.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rtl.artifacts.manifest import SHARDS_DIR, manifest_path, read_existing_manifest, write_manifest
from rtl.data.convention import Box, DatasetInfo, check_dataset, read_dataset_yaml, resolve_image_path
from rtl.data.corpus_local import ENGINES  # re-exported; defined in a light module the CLI reads
from rtl.data.corpus_view import SCHEMA
from rtl.data.safety import check_creatable, exclusive_lock
from rtl.data.sampling import ClassTable, undersample
from rtl.data.transforms import (
    DecodeError,
    decode_fit,
    decode_image,
    needs_patches,
    open_image,
    oriented_size,
    patch_crop,
)
from rtl.errors import DatasetError, RtlError
from rtl.raystart import _started_cluster, ensure_ray, ray_address  # issue 17: a cluster, or Ray on 127.0.0.1

__all__ = ["ENGINES", "build_corpus", "pick_engine", "size_bucket"]

LOCK_NAME = ".build.lock"  # flock held by the running build (rtl.data.safety.exclusive_lock)
_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def size_bucket(h: int, w: int) -> str:
    """Histogram bucket of an image by its long side, e.g. '256-511'."""
    m = max(h, w)
    lo = 0
    for edge in _BUCKETS:
        if m < edge:
            return f"{lo}-{edge - 1}"
        lo = edge
    return f">={lo}"


# ------------------------------------------------------------------------------------- worker side


class _ShardWork:
    """Decodes images one by one into the rows of one shard; used by Ray tasks, local workers and the driver."""

    def __init__(self, uid: int, p: dict, shard_dir: str) -> None:
        self.uid, self.p, self.shard_dir = uid, p, shard_dir
        self.t0, self.wall0, self.cpu0 = time.perf_counter(), time.time(), time.thread_time()
        self.cols: dict[str, list] = {f.name: [] for f in SCHEMA}
        self.rejects: list = []
        self.before: list = []
        self.after: list = []
        self.digests: list = []
        self.n_decoded = self.n_headers = 0

    def add(self, row: list) -> None:
        """Decode/fit/patch one image into rows. Never raises for bad images (they become rejects)."""
        ds, root, rel, label, cid, split, boxes = row
        p = self.p
        self.n_decoded += 1
        try:
            im = open_image(resolve_image_path(root, rel), max_pixels=p["max_pixels"])
            h, w = oriented_size(im)
            bx = [Box(*b) for b in boxes]
            if needs_patches(h, w, p["min_side"], p["max_side"], boxes=bx, max_downscale=p["max_downscale"],
                             min_defect_px=p.get("min_defect_px", 6.0)):
                arr = decode_image(im, keep_gray=p["keep_gray"])
                h, w = arr.shape[:2]
                pseed = int.from_bytes(hashlib.blake2b(f"{p['seed']}\0{ds}\0{rel}".encode(),
                                                       digest_size=4).digest(), "big")
                pieces = patch_crop(arr, bx, size=p["max_side"], max_patches=p["max_patches"], seed=pseed)
                if bx:  # background patches of a defect image would carry the defect label: drop them
                    pieces = [pc for pc in pieces if pc[1]]
                outs = [pc[0] for pc in pieces]
            else:  # decode + fit in one step (JPEGs much larger than the fit decode at reduced scale)
                outs = [decode_fit(im, p["min_side"], p["max_side"], keep_gray=p["keep_gray"])]
        except DatasetError as e:
            self.rejects.append([ds, rel, f"path refused: {e}"])
            self.before.append(None)
            return
        except DecodeError as e:
            self.rejects.append([ds, rel, e.reason])
            self.before.append(None)
            return
        except Exception as e:  # noqa: BLE001 - one odd file must not kill the build; it is listed instead
            self.rejects.append([ds, rel, f"unexpected error: {type(e).__name__}: {e}"])
            self.before.append(None)
            return
        self.before.append([h, w])
        cols = self.cols
        for k, img in enumerate(outs):
            data = img.tobytes()
            oh, ow, oc = img.shape
            for name, v in (("pixels", data), ("height", oh), ("width", ow), ("channels", oc),
                            ("class_id", cid), ("dataset", ds), ("label", label), ("source_path", rel),
                            ("patch", k), ("split", split)):
                cols[name].append(v)
            self.after.append([oh, ow])
            hh = hashlib.sha256(data)  # sha256: ~2x faster than blake2b here (SHA-NI)
            hh.update(json.dumps([oh, ow, oc, cid, ds, label, rel, k, split]).encode())
            self.digests.append([ds, rel, k, hh.hexdigest()])

    def header(self, path: str) -> None:
        """An image dropped by the cap: header only, for the "before" histogram."""
        self.n_headers += 1
        self.before.append(_header_size(path))

    def finish(self) -> dict:
        """Write the shard (if any row) and return the unit's small metadata."""
        cols, shard = self.cols, None
        if cols["pixels"]:
            shard = f"part-{self.uid:05d}.parquet"
            table = pa.Table.from_arrays([_column(cols[f.name], f.type) for f in SCHEMA], schema=SCHEMA)
            tmp = Path(self.shard_dir) / (shard + ".tmp")
            pq.write_table(table, tmp, compression="zstd", compression_level=1,
                           use_dictionary=["dataset", "label", "split"])
            os.replace(tmp, Path(self.shard_dir) / shard)
        return {"uid": self.uid, "shard": shard, "rows": len(cols["pixels"]), "rejects": self.rejects,
                "before": self.before, "after": self.after, "digests": self.digests,
                "class_rows": Counter(int(c) for c in cols["class_id"]), "n_decoded": self.n_decoded,
                "n_headers": self.n_headers,
                "seconds": time.perf_counter() - self.t0, "cpu_seconds": time.thread_time() - self.cpu0,
                "span": [self.wall0, time.time()], "pid": os.getpid()}


def _column(values: list, typ: pa.DataType) -> pa.Array:
    """A shard column from its buffers: the same array as `pa.array(values, typ)`, without pyarrow's
    import of pandas on the first `pa.array` of a list or ndarray (0.5-2 s per worker process here)."""
    import numpy as np

    n = len(values)
    if typ == pa.int32():
        return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(np.asarray(values, dtype=np.int32))])
    if typ in (pa.string(), pa.binary()):
        data = [v.encode() for v in values] if typ == pa.string() else values
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(v) for v in data], out=offsets[1:])
        if offsets[-1] < 2**31:  # int32 offsets (beyond: pa.array, which chunks)
            return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(offsets.astype(np.int32)),
                                                  pa.py_buffer(b"".join(data))])
    return pa.array(values, typ)


def _process_unit(unit: dict, p: dict, shard_dir: str) -> dict:
    """One unit (a Ray task, or a call in the local engine's worker processes): decode/fit/patch its images
    and write its shard. Never raises for bad images; pure (same unit and params -> same rows)."""
    work = _ShardWork(unit["uid"], p, shard_dir)
    for row in unit["decode"]:
        work.add(row)
    for path in unit["headers"]:
        work.header(path)
    return work.finish()


def _header_size(path: str) -> list[int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
        return [h, w]
    except Exception:  # noqa: BLE001 - unreadable header: counted as 'unreadable' in the histogram
        return None


# ------------------------------------------------------------------------------------- driver side


def _load(dataset_dirs: list[str | Path]) -> tuple[list[DatasetInfo], list[dict], list[str]]:
    infos, rejects, warnings = [], [], []
    seen: dict[str, Path] = {}
    for d in dataset_dirs:
        root = Path(d)
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset folder not found")
        rep = check_dataset(root)
        info = rep.info
        assert info is not None
        if info.name in seen:
            raise DatasetError(f"{root}: dataset name {info.name!r} already used by {seen[info.name]}")
        seen[info.name] = root
        info = DatasetInfo(info.name, info.domain, info.description, info.license, root.resolve(),
                           info.records)
        infos.append(info)
        for pr in rep.problems:
            fname = Path(pr.file).name
            if fname == "labels.csv" and pr.line > 0:  # a label row that was dropped
                rejects.append({"dataset": info.name, "path": f"labels.csv:{pr.line}", "reason": pr.message})
            else:
                warnings.append(f"{info.name}: {Path(pr.file).name}:{pr.line}: {pr.message}")
    return infos, rejects, warnings


def _init_ray(address: str | None) -> bool:
    """Connect to `address`/RAY_ADDRESS or start a local Ray; True when this call started it."""
    # Ray runs workers at nice 15 by default; a batch build wants its fair share of the CPUs (local only)
    return ensure_ray(address, _system_config={"worker_niceness": 0})


def pick_engine(engine: str, address: str | None = None) -> str:
    """'local' or 'ray' for `engine` auto|local|ray (grammar of `rtl predict --engine`).

    auto = 'ray' when a Ray is addressed (`address` / RAY_ADDRESS), started with `ray start` on this
    machine, or initialised in this process, else 'local': starting a private Ray for one build costs
    more than it saves on one machine, while an existing Ray (a cluster) is joined in ~1 s.
    """
    if engine not in ENGINES:
        raise RtlError(f"--engine must be auto, local or ray, got {engine!r}")
    if engine != "auto":
        return engine
    return "ray" if _ray_available(address) else "local"


def _ray_available(address: str | None) -> bool:
    if ray_address(address):
        return True
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return True
    # `ray start` leaves Ray's bootstrap file; look for it before asking Ray, whose import alone takes
    # ~0.6 s (a tenth of a small local build)
    return os.path.exists(_ray_address_file()) and _started_cluster() is not None


def _ray_address_file() -> str:
    """Where `ray start` writes the running cluster's address (= Ray's `get_ray_address_file(None)`)."""
    if "RAY_TMPDIR" in os.environ:
        tmp = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        tmp = os.environ["TMPDIR"]
    elif sys.platform.startswith(("darwin", "linux")):
        tmp = "/tmp"
    else:
        import tempfile

        tmp = tempfile.gettempdir()
    return os.path.join(tmp, "ray", "ray_current_cluster")


def _prepare_out(out: Path) -> dict | None:
    """Existing manifest of `out` (or None); refuses a non-empty folder that is not a corpus."""
    check_creatable(out, "corpus folder")  # not a file, and no file in the way of creating it
    if not out.exists():
        return None
    existing = read_existing_manifest(out)
    if existing is not None:
        return existing
    stray = [c.name for c in out.iterdir()
             if not (c.name.startswith((".building-", ".manifest-")) or c.name in (SHARDS_DIR, LOCK_NAME))]
    if stray:
        raise RtlError(f"{out}: folder exists, is not empty and is not a corpus (has {stray[0]})")
    return None


def _unit_cap(max_side: int) -> int:
    """Most images per unit / shard: ~32 MB of output pixels, 16..1024 images."""
    return max(16, min(1024, (32 << 20) // (3 * max_side * max_side)))


def _units(rows: list[list], headers: list[str], n_cpu: int, max_side: int = 256, first_uid: int = 0
           ) -> list[dict]:
    """Cut work into units, one task and one shard each.

    ~6 units per CPU balance the tail (units differ in cost: sizes, patches). A unit holds at most
    ~32 MB of output pixels (128 images at 256 px, 1024 at 64-72 px): small images are cheap (~1-3 ms),
    so they go in big batches that keep the per-task cost (scheduling, worker hand-off, one Parquet file)
    negligible, while large outputs keep shards of a readable size.
    """
    size = min(_unit_cap(max_side), max(4, math.ceil(len(rows) / (6 * max(1, n_cpu)))))
    n = max(1, math.ceil(len(rows) / size))
    units = [{"uid": first_uid + i, "decode": rows[i * size:(i + 1) * size], "headers": []} for i in range(n)]
    for j, h in enumerate(headers):
        units[j % n]["headers"].append(h)
    return units


def build_corpus(dataset_dirs: list[str | Path], out: str | Path, *, min_side: int = 224, max_side: int = 256,
                 cap: int | None = 1000, seed: int = 0, keep_gray: bool = True,
                 class_table: ClassTable | str | Path | list | dict | None = None, address: str | None = None,
                 max_patches: int = 8, max_downscale: float = 8.0, min_defect_px: float = 6.0,
                 max_pixels: int = 64_000_000,
                 progress: bool = True, engine: str = "auto") -> dict:
    """Build (or rebuild) the corpus at `out` from dataset folders; returns the manifest dict.

    `cap`: images kept per class (None or 0: all). A build into an existing corpus reuses its class
    table (ids stay stable); `class_table` overrides that. `engine`: auto|local|ray (`pick_engine`; the
    corpus is the same either way). See the module docstring for the pipeline.
    """
    t_start = time.perf_counter()
    timings: dict[str, float | str] = {}
    if not dataset_dirs:
        raise RtlError("no dataset folders given")
    if not 0 < min_side <= max_side:
        raise RtlError(f"need 0 < min_side <= max_side, got {min_side}, {max_side}")
    if cap is not None and cap < 0:
        raise RtlError(f"cap must be >= 0, got {cap}")
    cap = cap or None
    engine = pick_engine(engine, address)
    out = Path(out).absolute()  # Ray workers may run in another cwd (a cluster): never a relative path
    old = _prepare_out(out)
    dirs = list(dataset_dirs)
    for d in dirs:  # the cheap checks first: a typo must not wait for Ray to start
        if not Path(d).is_dir():
            raise DatasetError(f"{d}: dataset folder not found")
        read_dataset_yaml(d)
    if class_table is not None:
        table = class_table if isinstance(class_table, ClassTable) else ClassTable.load(class_table)
    elif old is not None:
        table = ClassTable.load(old)
    else:
        table = ClassTable()

    params = {"min_side": min_side, "max_side": max_side, "cap": cap, "seed": seed, "keep_gray": keep_gray,
              "max_patches": max_patches, "max_downscale": max_downscale, "min_defect_px": min_defect_px,
              "max_pixels": max_pixels}
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # one build per --out at a time: a second one refuses instead of deleting our .building-* (issue 12)
    lock = exclusive_lock(out / LOCK_NAME, f"{out}: another `rtl corpus build` is writing this corpus")
    work = out / f".building-{uuid.uuid4().hex[:8]}"
    started = ok = False
    pool = ThreadPoolExecutor(1, thread_name_prefix="rtl-label-scan")
    stop = threading.Event()
    try:
        for stale in out.glob(".building-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        (work / SHARDS_DIR).mkdir(parents=True)
        shard_dir = str(work / SHARDS_DIR)
        if engine == "ray":
            # The label scan (a stat per listed image) and Ray's start (mostly waiting on new processes)
            # are independent: a thread scans meanwhile and then decodes the first images itself
            # (`_head_start`) until Ray is up, so a build pays max(scan + head start, Ray start).
            head = pool.submit(_scan_and_head_start, dirs, table, cap, seed, params, shard_dir, stop)
            t0 = time.perf_counter()
            try:
                started = _init_ray(address)
            finally:
                stop.set()  # Ray is up (or failed): the driver hands the rest to Ray tasks
            import ray

            timings["ray_init"] = time.perf_counter() - t0
            (infos, rejects, warnings, items, rows, headers, timings["labels"]), head_metas = head.result()
            n_head = sum(m["n_decoded"] for m in head_metas)
            timings["head_start_images"] = n_head
            timings["head_start_seconds"] = sum(m["seconds"] for m in head_metas)
            t0 = time.perf_counter()
            n_head_headers = sum(m["n_headers"] for m in head_metas)
            metas = head_metas + _run(rows[n_head:], headers[n_head_headers:], params, shard_dir, progress,
                                      int(ray.cluster_resources().get("CPU", 1)), first_uid=len(head_metas))
            task_metas = metas[len(head_metas):]
        else:  # local: no Ray; the label scan first (in this thread), then the units in a process pool
            from rtl.data.corpus_local import LocalPool

            local = LocalPool()
            local.prestart()  # a forkserver imports its modules while we scan (fork: nothing to start)
            infos, rejects, warnings, items, rows, headers, timings["labels"] = _plan(dirs, table, cap, seed)
            t0 = time.perf_counter()
            units = _units(rows, headers, local.workers, max_side) if rows or headers else []
            metas = task_metas = local.run(_process_unit, units, (params, shard_dir), progress=progress,
                                           n_images=len(rows))
            timings["local_workers"] = min(local.workers, len(units))
            timings["local_start_method"] = local.method
        timings["process"] = time.perf_counter() - t0
        counts_before = Counter(cid for cid, _ in items)
        # parallelism actually achieved by the tasks: task-seconds per wall-second of that stage
        timings["decode_task_seconds"] = sum(m["seconds"] for m in task_metas)
        timings["decode_cpu_seconds"] = sum(m["cpu_seconds"] for m in metas)
        timings["decode_workers"] = len({m["pid"] for m in task_metas})
        t0 = time.perf_counter()
        manifest = _manifest(infos, table, params, counts_before, rejects, warnings, metas, len(items),
                             len(rows))
        manifest["seconds"] = round(time.perf_counter() - t_start, 3)
        timings["finalize"] = time.perf_counter() - t0
        timings["driver_peak_rss_mb"] = _peak_rss_mb()
        manifest["timings"] = {"engine": engine, **{k: v if isinstance(v, str) else round(v, 3)
                                                    for k, v in timings.items()}}
        _commit(out, work, manifest)
        ok = True
        return manifest
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)  # the head start stops within one image
        shutil.rmtree(work, ignore_errors=True)
        lock.release()
        if created and not ok:  # a failed first build leaves no folder behind
            (out / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        if started:
            import ray

            ray.shutdown()


def _scan_and_head_start(dirs: list, table: ClassTable, cap: int | None, seed: int, params: dict,
                         shard_dir: str, stop: threading.Event) -> tuple[tuple, list[dict]]:
    """Label scan (`_plan`), then `_head_start` until `stop`; -> (plan, the driver's shard metadata)."""
    plan = _plan(dirs, table, cap, seed)
    return plan, _head_start(plan[4], plan[5], params, shard_dir, stop)


def _head_start(rows: list, headers: list, params: dict, shard_dir: str, stop: threading.Event) -> list[dict]:
    """Decode `rows` from the front in the driver, in shards of a quarter unit, until `stop` is set.

    Starting a local Ray takes seconds (new processes importing Ray's Python modules) during which the
    driver only waits and the CPUs are partly idle; a small build can be mostly done by then. The images
    decoded here are the first ones of `rows` (returned metadata: `n_decoded` each), so the Ray tasks take
    `rows[sum(n_decoded):]`; with all rows done it goes on with the header reads of `headers` (`n_headers`).
    Stops within one image of `stop`; the corpus (rows, version) is the same whoever decodes which image.
    Shard uids 0, 1, ... (the Ray units are numbered after them).
    """
    metas: list[dict] = []
    per_shard = max(16, _unit_cap(params["max_side"]) // 4)  # <= ~8 MB of pixels held by the driver
    i = j = 0
    while (i < len(rows) or j < len(headers)) and not stop.is_set():
        work = _ShardWork(len(metas), params, shard_dir)
        while i < len(rows) and work.n_decoded < per_shard and not stop.is_set():
            work.add(rows[i])
            i += 1
        while i == len(rows) and j < len(headers) and not stop.is_set():
            work.header(headers[j])
            j += 1
        metas.append(work.finish())
    return metas


def _plan(dirs: list, table: ClassTable, cap: int | None, seed: int) -> tuple:
    """Label table -> (infos, rejects, warnings, items, rows to decode, header-only paths, seconds).

    Adds new (dataset, label) pairs to `table`; runs in a thread while Ray starts.
    """
    t0 = time.perf_counter()
    infos, rejects, warnings = _load(dirs)
    items, rec_of = [], {}
    for info in infos:
        for label in info.classes():
            table.add(info.name, label, info.domain)
        for r in info.records:
            cid = table.id(info.name, r.label)
            items.append((cid, (info.name, r.path)))
            rec_of[(info.name, r.path)] = (info, r, cid)
    kept = undersample(items, cap, seed)
    kept_keys = {k for _, k in kept}
    rows = []
    for _, key in sorted(kept, key=lambda it: it[1]):
        info, r, cid = rec_of[key]
        rows.append([info.name, str(info.root), r.path, r.label, cid, r.split,
                     [[b.xmin, b.ymin, b.xmax, b.ymax, b.label] for b in r.boxes]])
    headers = sorted(str(info.root / r.path) for key, (info, r, _) in rec_of.items() if key not in kept_keys)
    return infos, rejects, warnings, items, rows, headers, time.perf_counter() - t0


def _run(rows: list, headers: list, params: dict, shard_dir: str, progress: bool, n_cpu: int,
         first_uid: int = 0) -> list[dict]:
    """One Ray task per unit (1 CPU each), all submitted at once; Ray runs as many as there are CPUs.

    Plain tasks rather than Ray Data's map_batches (what this stage used before issue 13): each unit
    already is one batch whose output is a few KB of metadata, so streaming, backpressure and blocks add
    nothing, while a fresh Ray Data execution ran at parallelism 1.06-1.10 on 2 CPUs against 1.87-1.90
    for tasks (same units, `rtl corpus build` on 9k small images, interleaved runs).
    """
    import ray

    from rtl.data.corpus_local import BuildProgress

    if not rows and not headers:  # the driver's head start did it all
        return []
    units = _units(rows, headers, n_cpu, params["max_side"], first_uid)
    task = ray.remote(num_cpus=1)(_process_unit)
    pending = [task.remote(u, params, shard_dir) for u in units]
    metas: list[dict] = []
    line = BuildProgress(len(units), len(rows), progress)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            m = ray.get(done[0])
        except ray.exceptions.RayError as e:  # a worker died twice or a shard could not be written
            cause = getattr(e, "cause", None) or e
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
            raise RtlError(f"corpus build: a decode task failed: {first}") from None
        metas.append(m)
        line.add(m)
        line.tick(last=not pending)
    return sorted(metas, key=lambda m: m["uid"])


def _peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KB, macOS bytes)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _hist(sizes: list) -> dict[str, int]:
    c = Counter("unreadable" if s is None else size_bucket(*s) for s in sizes)
    order = {f"{lo}-{hi - 1}": i for i, (lo, hi) in enumerate(zip((0, *_BUCKETS), _BUCKETS))}
    return dict(sorted(c.items(), key=lambda kv: order.get(kv[0], 99)))


def _manifest(infos: list[DatasetInfo], table: ClassTable, params: dict, counts_before: Counter,
              rejects: list[dict], warnings: list[str], metas: list[dict], n_in: int, n_kept: int) -> dict:
    counts_after: Counter = Counter()
    before, after, digests = [], [], []
    for m in metas:
        counts_after.update({int(k): v for k, v in m["class_rows"].items()})
        before += m["before"]
        after += m["after"]
        digests += m["digests"]
        rejects += [{"dataset": d, "path": p, "reason": r} for d, p, r in m["rejects"]]
    classes = table.to_list()
    h = hashlib.sha256(json.dumps(classes, sort_keys=True).encode())
    for d in sorted(digests, key=lambda x: (x[0], x[1], x[2])):
        h.update(json.dumps(d).encode())
    shards = [f"{SHARDS_DIR}/{m['shard']}" for m in metas if m["shard"]]
    n_decode_rejects = sum(len(m["rejects"]) for m in metas)
    return {
        "version": h.hexdigest()[:16],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": params,
        "datasets": {i.name: {"domain": list(i.domain), "root": str(i.root), "description": i.description,
                              "license": i.license} for i in infos},
        "classes": classes,
        "counts_before": {str(c["id"]): int(counts_before.get(c["id"], 0)) for c in classes},
        "counts_after": {str(c["id"]): int(counts_after.get(c["id"], 0)) for c in classes},
        "empty_classes": [c["id"] for c in classes if counts_after.get(c["id"], 0) == 0],
        "size_hist_before": _hist(before),
        "size_hist_after": _hist(after),
        "rejects": sorted(rejects, key=lambda r: (r["dataset"], r["path"])),
        "warnings": warnings[:1000],
        "shards": shards,
        "n_images_in": n_in,
        "n_images_kept": n_kept,
        "n_images_ok": n_kept - n_decode_rejects,
        "n_rows_out": sum(m["rows"] for m in metas),
        "seconds": 0.0,
    }


def _commit(out: Path, work: Path, manifest: dict) -> None:
    """Swap the new shards in and write manifest.json last (temp file + rename)."""
    manifest_path(out).unlink(missing_ok=True)  # from here until the end, `out` is visibly not a finished corpus
    old = out / SHARDS_DIR
    if old.exists():
        trash = work / "old-shards"
        os.replace(old, trash)
    os.replace(work / SHARDS_DIR, old)
    write_manifest(out, manifest)
