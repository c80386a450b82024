"""Packaging: the wheel installs and runs on its own, and the pins cover every declared dependency.

The wheel test builds from a copy of the sources (no build/ or egg-info in the shared tree), installs it
with --no-deps into a fresh venv that sees the project venv's site-packages through a .pth file (no
network), and runs the `rtl` console script from there: `--version` and `demo --help` (which needs the
demo sweep shipped as package data). About 10-20 s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

import rtl

REPO = Path(__file__).resolve().parents[1]


def _deps() -> list[Requirement]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [Requirement(d) for d in data["project"]["dependencies"]]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"constraints.txt: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = ver
    return pins


def test_constraints_pin_every_dependency_within_its_bound_at_the_installed_version():
    pins = _pins()
    for req in _deps():
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        assert key in pins, f"{req.name} is a dependency but has no pin in constraints.txt"
        assert Version(pins[key]) in req.specifier, f"{req.name}=={pins[key]} violates {req.specifier}"
        installed = Version(metadata.version(req.name)).base_version  # torch 2.x+cpu -> 2.x
        assert installed == Version(pins[key]).base_version, f"{req.name}: pinned {pins[key]}, venv has {installed}"


def test_packaged_demo_spec_is_the_repo_one():
    from rtl.demo import PACKAGED_SPEC

    assert PACKAGED_SPEC.read_bytes() == (REPO / "sweeps" / "demo.yaml").read_bytes(), \
        "rtl/resources/demo.yaml (what `rtl demo` runs from a wheel) differs from sweeps/demo.yaml: " \
        "cp sweeps/demo.yaml rtl/resources/demo.yaml"


def test_wheel_installs_and_runs_without_the_checkout(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    shutil.copytree(REPO / "rtl", src / "rtl", ignore=shutil.ignore_patterns("__pycache__", "*.tmp", ".*"))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                   check=True, cwd=tmp_path, timeout=120)
    (wheel,) = wheels.glob("rtl-*.whl")
    assert wheel.name.startswith(f"rtl-{rtl.__version__}-")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    vpy = venv / "bin" / "python"
    purelib = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # the project's dependencies, visible but after the venv's own site-packages (where the wheel goes)
    Path(purelib, "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(vpy), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, cwd=tmp_path, timeout=120)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    exe = venv / "bin" / "rtl"
    where = subprocess.run([str(vpy), "-c", "import rtl, rtl.demo; print(rtl.__file__); "
                            "print(rtl.demo.DEFAULT_SPEC)"], check=True, capture_output=True, text=True,
                           cwd=tmp_path, env=env).stdout.split()
    assert where[0].startswith(purelib), f"rtl imported from {where[0]}, not from the wheel"
    assert where[1].startswith(purelib) and Path(where[1]).is_file()  # the packaged demo sweep

    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"rtl {rtl.__version__}", out.stderr
    out = subprocess.run([str(exe), "demo", "--help"], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=60)
    assert out.returncode == 0 and "--workspace" in out.stdout, out.stderr
