"""Filesystem safety shared by every importer and writer of the data area.

One mechanism per class of hostile input, so adapters (imagefolder, csv, voc, coco, yolo, ...) and the
writers (import, synth, corpus build) cannot each get it slightly wrong:

- `safe_source_path(root, rel)`: a source image named by an annotation file or found by walking the
  source tree is accepted only when its name is printable UTF-8 without line breaks, it is not absolute,
  has no `..`, stays inside `root` after resolving symlinks, is a regular file and has an image
  extension. Anything else raises `DatasetError(reason)`; importers turn that into a reject.
- `atomic_destination(dst)`: write a new folder as a temporary sibling and rename it into place only on
  success, so a failed or interrupted import leaves nothing (the corpus build does the same with its
  `.building-*` folder).
- `exclusive_lock(path, busy)`: an advisory `fcntl.flock` so two writers of one output refuse instead of
  deleting each other's work.
- `claim_destination(out, marker, params, force)`: a generator (`rtl synth`) writes only into an empty
  folder or into its own previous output with the same parameters (recognised by a marker file).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

from rtl.data.convention import IMAGE_EXTS
from rtl.data.names import name_problem, printable
from rtl.errors import DatasetError, RtlError

__all__ = ["atomic_destination", "check_creatable", "claim_destination", "exclusive_lock", "name_problem",
           "printable", "safe_source_path"]

def safe_source_path(root: str | Path, rel: str | os.PathLike) -> Path:
    """The source image `root/rel` (or `rel` itself when it is an absolute path under `root` found
    by walking the tree); raises DatasetError(reason) for anything an import must not read or copy.

    Text paths from annotation files (`rel` a str) may not be absolute or contain `..`; every path must
    stay inside `root` after resolving symlinks, be a regular file and carry an image extension.
    """
    root = Path(root)
    if isinstance(rel, str):
        text = rel.replace("\\", "/")
        if not text.strip():
            raise DatasetError("empty image path")
        if PurePosixPath(text).is_absolute() or PureWindowsPath(rel).drive:
            raise DatasetError("absolute path refused (paths must be relative to the source folder)")
        if ".." in PurePosixPath(text).parts:
            raise DatasetError("path escapes the source folder (..)")
        path = root / text
    else:
        path = Path(rel)
        if not path.is_absolute():
            path = root / path
        try:
            text = path.relative_to(root).as_posix()
        except ValueError:
            text = path.as_posix()
    problem = name_problem(text)
    if problem:
        raise DatasetError(f"file {problem}")
    try:
        root_r = root.resolve()
        full = path.resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: symlink loop (Python < 3.13)
        raise DatasetError(f"cannot resolve path: {e}") from None
    if full != root_r and root_r not in full.parents:
        raise DatasetError("resolves outside the source folder (symlink?)")
    try:
        if not full.exists():
            raise DatasetError("image file not found")
        if not full.is_file():
            raise DatasetError("not a regular file")
    except OSError as e:  # e.g. a name too long for the filesystem
        raise DatasetError(f"cannot access: {e.strerror or e}") from None
    if path.suffix.lower() not in IMAGE_EXTS:
        raise DatasetError(f"not an image file extension ({path.suffix or 'none'}; "
                           f"accepted: {' '.join(sorted(IMAGE_EXTS))})")
    return path


def check_creatable(dst: str | Path, what: str = "destination") -> None:
    """Raise a one-line RtlError when the folder `dst` cannot be created because a file is in the way."""
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise RtlError(f"{dst}: {what} exists and is not a folder")
    for anc in dst.absolute().parents:
        if anc.exists() or anc.is_symlink():
            if not anc.is_dir():
                raise RtlError(f"{dst}: cannot create the {what}: {anc} is a file, not a folder")
            return


@contextmanager
def atomic_destination(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder of `dst`; on success rename it to `dst`, on any failure (also
    Ctrl-C) remove it and any parent folders this call created. `dst` must be absent or an empty folder.
    """
    dst = Path(dst)
    check_creatable(dst)
    if dst.is_dir() and any(dst.iterdir()):
        raise DatasetError(f"{dst}: destination exists and is not empty")
    parent = dst.absolute().parent
    created = []
    for anc in [parent, *parent.parents]:
        if anc.exists():
            break
        created.append(anc)
    tmp = parent / f".{dst.name}.importing-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)  # plain mkdir: the folder gets the user's umask, like any other
    except OSError as e:
        _remove_empty(created)
        raise DatasetError(f"{dst}: cannot create the destination: {e.strerror or e}") from None
    try:
        yield tmp
        try:
            os.rename(tmp, dst)  # replaces an empty folder atomically; fails when someone filled it
        except OSError as e:
            raise DatasetError(f"{dst}: cannot move the import into place: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    for d in folders:  # deepest first
        try:
            d.rmdir()
        except OSError:
            return


class _Lock:
    def __init__(self, fh: object) -> None:
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file drops the flock
            self._fh = None

    def __enter__(self) -> _Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def exclusive_lock(path: str | Path, busy: str) -> _Lock:
    """Take an exclusive advisory lock on the file `path` (created if needed) without waiting.

    Raises RtlError(`busy` + the holder's pid) when another process holds it. Use as a context manager or
    call `.release()`; the kernel drops the lock when the process dies, so a killed writer never leaves a
    stale lock behind.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        return _Lock(None)
    path = Path(path)
    try:
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
    except OSError as e:
        raise RtlError(f"{path}: cannot create lock file: {e.strerror or e}") from None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        raise RtlError(f"{busy}{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to finish") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return _Lock(fh)


def claim_destination(out: str | Path, marker: str, params: dict, *, force: bool = False,
                      command: str = "rtl synth") -> None:
    """Make sure the generator may write into `out`, then mark it as its own.

    Allowed: `out` absent or empty; `out` holding `marker` with the same `params` (a rerun, also of an
    interrupted run); anything with `force`. Refused (one-line RtlError, nothing touched): a non-empty
    folder without the marker (user data) or with other parameters.
    """
    out = Path(out)
    check_creatable(out, "output folder")
    mpath = out / marker
    if out.is_dir() and not force:
        entries = sorted(p.name for p in out.iterdir() if p.name != marker)
        if entries:
            try:
                old = json.loads(mpath.read_text(encoding="utf-8"))
            except FileNotFoundError:
                old = None
            except (OSError, ValueError):
                old = {}
            if old is None:
                raise RtlError(f"{out}: folder is not empty and was not written by {command} (has "
                               f"{printable(entries[0])}); choose an empty folder or pass --force to overwrite")
            if old.get("params") != params:
                was = " ".join(f"{k}={v}" for k, v in sorted((old.get("params") or {}).items())) or "unknown"
                now = " ".join(f"{k}={v}" for k, v in sorted(params.items()))
                raise RtlError(f"{out}: holds {command} output of other parameters ({was}, not {now}); "
                               f"choose another folder or pass --force to overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
        mpath.write_text(json.dumps({"command": command, "params": params}, sort_keys=True) + "\n",
                         encoding="utf-8")
    except OSError as e:
        raise RtlError(f"{out}: cannot write: {e.strerror or e}") from None
