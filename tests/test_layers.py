"""Imports point down only: artifacts (bottom) -> data -> models -> train -> select -> deliver -> sweep ->
study/report -> the CLI modules. Function-local imports count too (they hide cycles, not remove them).
Known exceptions are listed with a reason; the test also fails when one of them is gone, so the list
only shrinks."""

from __future__ import annotations

import ast
from pathlib import Path

RTL = Path(__file__).resolve().parents[1] / "rtl"
RANK = {"artifacts": 0, "errors": 0, "registry": 0, "yamlio": 0, "cliargs": 0, "raystart": 0, "resources": 0,
        "data": 1, "models": 2, "train": 3, "select": 4, "deliver": 5, "sweep": 6, "study": 7, "report": 7}
# deliver (model folders, predict) knows nothing of sweeps; rtl.sweep.deliver keeps a sweep's best model
CLI = 9  # rtl/cli.py, rtl/demo.py and every */cli.py / *_cli.py: the top
KNOWN: set[tuple[str, str]] = set()  # (module, imported module) pairs allowed to point up, each with a reason


def _layer(module: str, path: Path | None = None) -> int | None:
    parts = module.split(".")
    if parts[0] != "rtl":
        return None
    if path is not None and (path.name in ("cli.py", "demo.py") or path.name.endswith("_cli.py")):
        return CLI
    if len(parts) == 1:
        return 0
    return CLI if parts[1] in ("cli", "demo") else RANK.get(parts[1], 0)


def _violations() -> set[tuple[str, str]]:
    out = set()
    for f in RTL.rglob("*.py"):
        mod = ".".join(f.relative_to(RTL.parent).with_suffix("").parts).removesuffix(".__init__")
        here = _layer(mod, f)
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                there = _layer(name)
                if there is not None and here is not None and there > here:
                    out.add((mod, name))
    return out


def test_imports_point_down_only() -> None:
    found = _violations()
    new = sorted(found - KNOWN)
    assert not new, f"imports that point up (move the shared code down, e.g. into rtl.artifacts): {new}"
    gone = sorted(KNOWN - found)
    assert not gone, f"fixed: remove from KNOWN: {gone}"


def test_artifacts_import_nothing_from_rtl_but_errors() -> None:
    for f in (RTL / "artifacts").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rtl"):
                assert node.module == "rtl.errors" or node.module.startswith("rtl.artifacts"), (f.name, node.module)
            assert not (isinstance(node, ast.ImportFrom) and node.level), (f.name, "relative import")
