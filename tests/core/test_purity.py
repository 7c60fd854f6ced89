"""puresound_core stays pure: importing all of it loads no Prefect."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import puresound_core


def test_core_imports_no_prefect():
    modules = [f"puresound_core.{m.name}" for m in pkgutil.iter_modules(puresound_core.__path__)]
    assert "puresound_core.loudness" in modules
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "leaked = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
            "print(leaked)\n"
            "sys.exit(1 if leaked else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
