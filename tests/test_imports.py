"""Every ddpm module imports on its own: no import circle, no module that needs another imported first.

Each module is imported in a process that has imported no ddpm module before. One interpreter
imports the heavy third-party libraries once (torch alone takes seconds to import) and forks a
child per module (one per core at a time), so the check stays fast; a circle among ddpm modules
shows up the same way as in a fresh interpreter, since no third-party library imports ddpm.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "ddpm"
# Streamlit page scripts: Streamlit runs them as scripts (they draw a page at import), nothing imports them;
# and ``__main__`` modules, which run their command when imported (``python -m``).
PAGE_SCRIPTS = ("ddpm.dashboard.views.",)
MAIN_MODULES = (".__main__",)

CHECK = r"""
import importlib, json, os, sys
for lib in ("torch", "torchvision", "numpy", "scipy", "hydra", "omegaconf", "PIL", "tqdm", "matplotlib.pyplot"):
    importlib.import_module(lib)
assert not [m for m in sys.modules if m == "ddpm" or m.startswith("ddpm.")], "a third-party library imported ddpm"
failed, running = {}, {}


def reap():
    pid, status = os.wait()
    name, r = running.pop(pid)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    if out or status:
        failed[name] = out.decode() or f"exit status {status}"


for name in json.loads(sys.argv[1]):
    if len(running) >= os.cpu_count():  # one child per core at a time
        reap()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            msg = b""
        except BaseException as exc:  # report any failure, including SystemExit at import time
            msg = f"{type(exc).__name__}: {exc}".encode()
        os.write(w, msg)  # a line or two: far below the pipe's buffer, so the child never blocks
        os._exit(0)
    os.close(w)
    running[pid] = (name, r)
while running:
    reap()
print(json.dumps(failed))
"""


def ddpm_modules() -> list[str]:
    """Dotted names of every module of the ddpm package (conf/ ships as ddpm.conf)."""
    names = ["ddpm.conf"]
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not name.startswith(PAGE_SCRIPTS) and not name.endswith(MAIN_MODULES):
            names.append(name)
    return names


def test_module_list_is_complete() -> None:
    names = ddpm_modules()
    assert {"ddpm", "ddpm.config", "ddpm.cli", "ddpm.sample.cli", "ddpm.visualize.config", "ddpm.evaluate.cli", "ddpm.regimes.cli"} <= set(
        names
    )
    assert len(names) == len(set(names)) > 40


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_module_imports_on_its_own() -> None:
    names = ddpm_modules()
    res = subprocess.run([sys.executable, "-c", CHECK, json.dumps(names)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    failed = json.loads(res.stdout.strip().splitlines()[-1])
    assert failed == {}, failed


def test_no_import_indirection() -> None:
    """Schemas are registered by the commands that own them, not looked up by name."""
    offenders = [str(p.relative_to(REPO)) for p in PKG.rglob("*.py") if "__import__(" in p.read_text()]
    assert offenders == []
