"""The library imports without Ray, FastAPI or ScaNN (checked in a fresh interpreter)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import towers


def test_towers_imports_without_ray_fastapi_scann():
    modules = [m.name for m in pkgutil.walk_packages(towers.__path__, "towers.")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('ray', 'fastapi', 'scann'))\n"
        "assert not bad, bad\n"
        "print(len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(modules) >= 30


def test_the_serve_app_module_imports_without_torch():
    """Serve's ingress and event-log replicas import ``serving.app`` and nothing that loads a
    model: torch (~4 s of CPU a process on this machine) stays out of them."""
    code = "import sys, serving.app\nassert 'torch' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
