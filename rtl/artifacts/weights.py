"""`weights.json`: importance weights w(y) = P_t(y)/P_s(y) and class masses (Ngiam et al. 2018).

The one reader of the file (written by `rtl.select.importance.write_weights`, read by `rtl select`, the
`weighted` pretraining strategy and the sweep). A class id may appear once; `weight` or `class_mass`
(hand-written files may give either); values finite and >= 0, not all zero.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rtl.errors import RtlError


@dataclass
class WeightsFile:
    """Parsed `weights.json`. `weights`/`class_mass` map class id -> value (each sums to 1)."""

    corpus_version: str | None
    temperature: float | None
    classes: list[dict]
    weights: dict[int, float]
    class_mass: dict[int, float]
    datasets: dict[str, float] = field(default_factory=dict)
    domains: dict[str, float] = field(default_factory=dict)
    suggested_datasets: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def read_weights(path: str | Path) -> WeightsFile:
    """Read and validate `weights.json`; RtlError naming the file and field on bad input."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise RtlError(f"{path}: cannot read weights file ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise RtlError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list) or not doc["classes"]:
        raise RtlError(f"{path}: field 'classes' must be a non-empty list")
    weights: dict[int, float] = {}
    mass: dict[int, float] = {}
    for i, c in enumerate(doc["classes"]):
        try:
            cid = int(c["id"])
            cm = float(c["class_mass"]) if "class_mass" in c else None
            w = float(c["weight"]) if "weight" in c else float(c["class_mass"])
        except (KeyError, TypeError, ValueError):
            raise RtlError(f"{path}: classes[{i}] needs an integer 'id' and a numeric 'weight' (or 'class_mass')") from None
        if not math.isfinite(w) or w < 0 or (cm is not None and (not math.isfinite(cm) or cm < 0)):
            raise RtlError(f"{path}: classes[{i}] weight/class_mass must be finite and >= 0")
        if cid in weights:
            raise RtlError(f"{path}: classes[{i}] repeats class id {cid}")
        weights[cid] = w
        if cm is not None:
            mass[cid] = cm
    ws = sum(weights.values())
    if ws <= 0:
        raise RtlError(f"{path}: every class weight is zero")
    weights = {k: v / ws for k, v in weights.items()}
    if len(mass) != len(weights):  # hand-written file: treat the weights as class frequencies
        mass = dict(weights)
    else:
        ms = sum(mass.values())
        if ms <= 0:
            raise RtlError(f"{path}: every class_mass is zero")
        mass = {k: v / ms for k, v in mass.items()}
    temp = doc.get("temperature")
    known = {"corpus_version", "temperature", "classes", "datasets", "domains", "suggested_datasets"}
    return WeightsFile(
        corpus_version=doc.get("corpus_version"),
        temperature=None if temp is None else float(temp),
        classes=doc["classes"],
        weights=weights,
        class_mass=mass,
        datasets=dict(doc.get("datasets") or {}),
        domains=dict(doc.get("domains") or {}),
        suggested_datasets=list(doc.get("suggested_datasets") or []),
        extra={k: v for k, v in doc.items() if k not in known},
    )
