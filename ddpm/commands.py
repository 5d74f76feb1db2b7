"""The commands, each declared once: its name, schema, checks, console script, run function and outputs.

``ddpm-<name>`` composes ``conf/<name>.yaml`` over the schema stored as ``<name>_schema``, checks it
with ``validate`` and runs ``run(cfg, run_dir)``. Everything that needs the list of commands reads
:data:`COMMANDS`: the schemas' registration with Hydra's ConfigStore (:func:`register_schemas`, called
by :func:`ddpm.cli.hydra_main`'s ``main`` and by :func:`ddpm.cli.compose_checked`, never at import), the
console scripts of ``pyproject.toml`` (checked by ``tests/test_commands.py``), the tests' fixtures and
the schema walk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from ddpm.config import SamplerConfig, TrainConfig
from ddpm.evaluate import config as evaluate_config
from ddpm.export import config as export_config
from ddpm.regimes import config as regimes_config
from ddpm.sample import config as sample_config
from ddpm.train import config as train_config
from ddpm.visualize import config as visualize_config


@dataclass(frozen=True)
class Command:
    """One ``ddpm-<name>`` command.

    Attributes:
        name: the command is ``ddpm-<name>``, its config ``conf/<name>.yaml``.
        schema: the dataclass its config is merged into, stored as ``<name>_schema``.
        validate: its range checks of the composed config (raise :class:`ddpm.errors.ConfigError`).
        main: ``module:function`` of its console script.
        run: ``module:function`` that does the work, ``run(cfg, run_dir)``.
        outputs: what it writes into its run dir (``{name}``: the config's ``name`` key).
        groups: schemas of config groups only this command has, ``(group, schema name, dataclass)``.
    """

    name: str
    schema: type
    validate: Callable[[Any], None]
    main: str
    run: str
    outputs: tuple[str, ...]
    groups: tuple[tuple[str, str, type], ...] = field(default=())

    @property
    def script(self) -> str:
        return f"ddpm-{self.name}"

    @property
    def schema_name(self) -> str:
        return f"{self.name}_schema"


COMMANDS: tuple[Command, ...] = (
    Command(
        "train",
        TrainConfig,
        train_config.validate_train,
        "ddpm.train.cli:main",
        "ddpm.train.run:train",
        ("checkpoints", "samples", "tb", "metrics.json"),
    ),
    Command(
        "sample",
        sample_config.SampleConfig,
        sample_config.validate_sample,
        "ddpm.sample.cli:main",
        "ddpm.sample.run:sample",
        sample_config.OUTPUTS,
    ),
    Command(
        "evaluate",
        evaluate_config.EvaluateConfig,
        evaluate_config.validate_evaluate,
        "ddpm.evaluate.cli:main",
        "ddpm.evaluate.run:evaluate",
        evaluate_config.OUTPUTS,
        groups=(("feature_extractor", "feature_extractor_schema", evaluate_config.FeatureExtractorConfig),),
    ),
    Command(
        "visualize",
        visualize_config.VisualizeConfig,
        visualize_config.validate_visualize,
        "ddpm.visualize.cli:main",
        "ddpm.visualize.run:visualize",
        visualize_config.OUTPUTS,
    ),
    Command(
        "regimes",
        regimes_config.RegimesConfig,
        regimes_config.validate_regimes,
        "ddpm.regimes.cli:main",
        "ddpm.regimes.run:run_regimes",
        regimes_config.OUTPUTS,
    ),
    Command(
        "export",
        export_config.ExportConfig,
        export_config.validate_export,
        "ddpm.export.cli:main",
        "ddpm.export.cli:export",
        export_config.OUTPUTS,
    ),
)
BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}
# Console scripts that are not Hydra commands.
OTHER_SCRIPTS = {"ddpm-dashboard": "ddpm.dashboard.cli:main"}
# Schemas of the groups every command shares: (group, schema name, dataclass).
SHARED_GROUPS: tuple[tuple[str, str, type], ...] = (("sampler", "sampler_schema", SamplerConfig),)


def command(name: str) -> Command:
    """The command ``ddpm-<name>``."""
    return BY_NAME[name]


def console_scripts() -> dict[str, str]:
    """``pyproject.toml``'s ``[project.scripts]``: script name -> ``module:function``."""
    return {**{c.script: c.main for c in COMMANDS}, **OTHER_SCRIPTS}


def register_schemas() -> None:
    """Store every command's schema and every group schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for group, name, node in SHARED_GROUPS:
        cs.store(group=group, name=name, node=node)
    for c in COMMANDS:
        cs.store(name=c.schema_name, node=c.schema)
        for group, name, node in c.groups:
            cs.store(group=group, name=name, node=node)
