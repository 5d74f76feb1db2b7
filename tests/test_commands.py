"""The list of commands (:mod:`ddpm.commands`) is the one every other list is checked against."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import tomllib
from conftest import COMMAND_NAMES, REPO, compose_config

from ddpm.commands import COMMANDS, command, console_scripts


def resolve(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def test_pyproject_scripts_are_the_commands():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == console_scripts()
    assert {f"ddpm-{n}" for n in COMMAND_NAMES} <= set(scripts)


def test_every_command_is_complete():
    configs = {p.stem for p in (REPO / "conf").glob("*.yaml")}
    assert configs == set(COMMAND_NAMES), "one conf/<name>.yaml per command, and a command for each"
    for c in COMMANDS:
        assert callable(resolve(c.main)) and callable(resolve(c.run)), c.name
        assert resolve(f"ddpm.{c.name}.config:validate_{c.name}") is c.validate
        assert c.outputs, c.name
        cfg = compose_config(c.name, ["ckpt=/nonexistent/last.pt"] if "ckpt" in c.schema.__dataclass_fields__ else [])
        assert set(cfg) >= set(c.schema.__dataclass_fields__) - {"defaults"}, c.name
    assert command("sample").outputs == importlib.import_module("ddpm.sample").OUTPUTS
    assert command("export").outputs[0] == "{name}" + importlib.import_module("ddpm.export_format").SUFFIX


def test_package_inits_do_not_import_cli():
    for init in (REPO / "ddpm").rglob("__init__.py"):
        for node in ast.walk(ast.parse(init.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.endswith(".cli") and node.module != "ddpm.cli", f"{init}: imports {node.module}"


def test_importing_a_command_registers_nothing():
    """The schemas are stored when a command runs (or composes), not when its module is imported."""
    code = (
        "from hydra.core.config_store import ConfigStore\n"
        "import ddpm.sample.cli, ddpm.train.cli, ddpm.evaluate.cli, ddpm.visualize.cli, ddpm.export.cli, ddpm.regimes.cli\n"
        "print(sorted(k for k in ConfigStore.instance().repo if k.endswith('_schema.yaml')))\n"
        "from ddpm.commands import register_schemas\n"
        "register_schemas()\n"
        "print(sorted(k for k in ConfigStore.instance().repo if k.endswith('_schema.yaml')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1] == str(sorted(f"{n}_schema.yaml" for n in COMMAND_NAMES))
