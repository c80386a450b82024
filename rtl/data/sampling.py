"""Per-class undersampling from the label table, and the stable (dataset, label) -> class id table.

Both run before a single pixel is decoded: the corpus build decides what to keep from `labels.csv`
alone, so a cap that drops 90% of a big class also drops 90% of the decode work.

Selection is a bottom-k sample by hash (as in min-wise hashing, Broder 1997): every item gets the key
hash(seed, class, item) and a class keeps its `cap` smallest keys. So (1) the result does not depend on
item order, (2) a class's selection depends only on its own items (adding another dataset changes
nothing), and (3) adding items to a class only swaps in new items whose key ranks in the bottom `cap`,
keeping the rest of yesterday's selection.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rtl.artifacts.manifest import read_class_table_source
from rtl.errors import RtlError

__all__ = ["undersample", "sample_key", "ClassTable"]

T = TypeVar("T", bound=tuple)


def sample_key(seed: int, class_key: Hashable, item_key: Hashable) -> bytes:
    """The 16-byte sort key of an item (canonical JSON of the keys, so tuples and lists agree)."""
    payload = json.dumps([int(seed), class_key, item_key], separators=(",", ":"), default=str)
    return hashlib.blake2b(payload.encode(), digest_size=16).digest()


def undersample(items: Iterable[T], cap: int | None, seed: int) -> list[T]:
    """Keep at most `cap` items per class from `(class_key, item_key)` pairs; None keeps everything.

    Returns the kept pairs in their input order. Deterministic for a given seed; see the module docstring
    for why a per-item hash key is used instead of a seeded shuffle.
    """
    items = list(items)
    if cap is None:
        return items
    if cap < 0:
        raise ValueError(f"cap must be >= 0 or None, got {cap}")
    by_class: dict[Any, list[tuple[bytes, int]]] = {}
    for i, it in enumerate(items):
        ck, ik = it[0], it[1]
        by_class.setdefault(_hashable(ck), []).append((sample_key(seed, ck, ik), i))
    keep: set[int] = set()
    for members in by_class.values():
        if len(members) <= cap:
            keep.update(i for _, i in members)
        else:
            keep.update(i for _, i in sorted(members)[:cap])
    return [it for i, it in enumerate(items) if i in keep]


def _hashable(k: Any) -> Any:
    return tuple(_hashable(x) for x in k) if isinstance(k, list) else k


class ClassTable:
    """Append-only (dataset, label) -> id table: ids never change once given out.

    Models trained on a corpus index their outputs by these ids, so a rebuilt or extended corpus must
    keep every existing id; new pairs get the next free ids in the order they are added.
    """

    def __init__(self, entries: Sequence[dict] = ()) -> None:
        self._entries: list[dict] = []
        self._ids: dict[tuple[str, str], int] = {}
        for i, e in enumerate(entries):
            try:
                eid, ds, label = int(e["id"]), str(e["dataset"]), str(e["label"])
            except (KeyError, TypeError, ValueError):
                raise RtlError(f"class table entry {i} needs id, dataset, label: {e!r}") from None
            if eid != i:
                raise RtlError(f"class table ids must be 0..n-1 in order; entry {i} has id {eid}")
            if (ds, label) in self._ids:
                raise RtlError(f"class table lists ({ds}, {label}) twice")
            self._ids[(ds, label)] = i
            self._entries.append({"id": i, "dataset": ds, "label": label,
                                  "domain": list(e.get("domain", []) or [])})

    @classmethod
    def load(cls, src: str | Path | dict | list) -> ClassTable:
        """From a manifest dict, a class list, a corpus dir, a manifest.json or a JSON class list."""
        if isinstance(src, (str, Path)):
            src = read_class_table_source(src)
        if isinstance(src, dict):
            if "classes" not in src:
                raise RtlError("class table: expected a manifest with a 'classes' list")
            src = src["classes"]
        if not isinstance(src, list):
            raise RtlError("class table: expected a list of {id, dataset, label}")
        return cls(src)

    def add(self, dataset: str, label: str, domain: Sequence[str] = ()) -> int:
        """Id of (dataset, label), appending it when new. Updates the stored domain tags."""
        key = (dataset, label)
        if key in self._ids:
            i = self._ids[key]
            if domain:
                self._entries[i]["domain"] = list(domain)
            return i
        i = len(self._entries)
        self._ids[key] = i
        self._entries.append({"id": i, "dataset": dataset, "label": label, "domain": list(domain)})
        return i

    def id(self, dataset: str, label: str) -> int:
        try:
            return self._ids[(dataset, label)]
        except KeyError:
            raise RtlError(f"class ({dataset}, {label}) is not in the class table") from None

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._entries)

    def to_list(self) -> list[dict]:
        return [dict(e, domain=list(e["domain"])) for e in self._entries]
