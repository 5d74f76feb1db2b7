"""Field rules (``rule(...)`` in a schema field's metadata) and :func:`ddpm.config.check`, which applies them.

Every command's schema declares its single-field ranges and enums this way; tests/test_schema_walk.py
checks that each of them is applied by its command. Here ``check`` itself runs on a small schema.
"""

# ruff: noqa: UP045  (OmegaConf structured configs need typing.Optional, not X | None)

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
from omegaconf import DictConfig, OmegaConf

from ddpm.config import Rule, check, field_rules, rule
from ddpm.errors import ConfigError


@dataclass
class Inner:
    steps: int = field(default=50, metadata=rule(ge=1))
    spacing: str = field(default="trailing", metadata=rule(choices=("leading", "trailing", "linspace")))
    ratio: float = field(default=0.5, metadata=rule(gt=0.0, lt=1.0))
    sizes: list[int] = field(default_factory=lambda: [1, 2], metadata=rule(ge=1, length=2))
    free: int = 7  # no rule


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    spare: Optional[Inner] = None  # a group that may be null
    count: Optional[int] = field(default=None, metadata=rule(ge=0, optional=True, note="(all)"))


def composed(**values: Any) -> DictConfig:
    """``Outer`` as a composed config, with ``values`` set at their dotted keys."""
    cfg = OmegaConf.structured(Outer)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def refusal(cfg: DictConfig) -> str:
    """The one-line message with which ``check`` refuses ``cfg``."""
    with pytest.raises(ConfigError) as exc:
        check(cfg, Outer)
    return str(exc.value)


def test_a_nested_rule_names_the_dotted_key() -> None:
    assert refusal(composed(**{"inner.steps": 0})) == "inner.steps must be >= 1, got 0"
    assert refusal(composed(**{"inner.ratio": 1.0})) == "inner.ratio must lie in (0, 1), got 1.0"


def test_values_inside_the_range_pass() -> None:
    check(composed(), Outer)
    check(composed(**{"inner.steps": 1, "inner.ratio": 0.999, "inner.sizes": [3, 1], "count": 0}), Outer)


def test_an_enum_outside_its_choices_fails() -> None:
    assert refusal(composed(**{"inner.spacing": "middle"})) == "inner.spacing must be leading, trailing or linspace, got 'middle'"
    check(composed(**{"inner.spacing": "linspace"}), Outer)


def test_a_field_without_a_rule_is_untouched() -> None:
    cfg = composed(**{"inner.free": -(10**9)})
    check(cfg, Outer)
    assert cfg.inner.free == -(10**9)
    inner = ["steps", "spacing", "ratio", "sizes"]  # not free
    assert [key for key, _ in field_rules(Outer)] == [f"inner.{k}" for k in inner] + [f"spare.{k}" for k in inner] + ["count"]


def test_null_nan_lists_and_null_groups() -> None:
    check(composed(count=None), Outer)  # optional: null passes
    assert refusal(composed(count=-1)) == "count must be >= 0 or null (all), got -1"
    assert refusal(composed(**{"inner.ratio": math.nan})) == "inner.ratio must lie in (0, 1), got nan"  # NaN fails every bound
    assert refusal(composed(**{"inner.sizes": [1]})) == "inner.sizes must be 2 values >= 1, got [1]"
    assert refusal(composed(**{"inner.sizes": [0, 1]})) == "inner.sizes must be 2 values >= 1, got [0, 1]"
    cfg = composed()
    cfg.spare = Inner(steps=0)  # a group that is set is walked like any other
    assert refusal(cfg) == "spare.steps must be >= 1, got 0"


def test_finiteness_is_named_only_for_an_infinite_value() -> None:
    r = Rule(gt=0.0, finite=True)
    assert r.message("train.lr", 0.0) == "train.lr must be > 0, got 0.0"
    assert r.message("train.lr", math.nan) == "train.lr must be > 0, got nan"
    assert r.message("train.lr", math.inf) == "train.lr must be > 0 and finite, got inf"
    assert not r.accepts(math.inf) and not r.accepts(math.nan) and r.accepts(1e300)


def test_a_list_of_choices_names_its_unknown_items() -> None:
    r = Rule(choices=("fid", "kid"), min_len=1, item="metric")
    assert r.message("metrics", ["fid", "bogus"]) == "metrics must be 1 or more of fid, kid (unknown metric 'bogus'), got ['fid', 'bogus']"
    assert r.message("metrics", []) == "metrics must be 1 or more of fid, kid, got []"


def test_absent_and_missing_keys_are_skipped() -> None:
    """A config read back from an older checkpoint may lack a key, or leave one ``???``."""
    check(OmegaConf.create({"inner": {"steps": "???", "ratio": 0.2}}), Outer)
    with pytest.raises(ConfigError, match=r"^inner\.ratio must lie in \(0, 1\), got 2$"):
        check(OmegaConf.create({"inner": {"ratio": 2}}), Outer)


@pytest.mark.parametrize(
    "r, text",
    [
        (Rule(ge=1), "be >= 1"),
        (Rule(gt=0.0, finite=True), "be > 0 and finite"),
        (Rule(finite=True), "be finite"),
        (Rule(ge=0.0, lt=1.0), "lie in [0, 1)"),
        (Rule(gt=0.0, lt=1.0), "lie in (0, 1)"),
        (Rule(ge=0.0, le=100.0), "lie in [0, 100]"),
        (Rule(ge=1, le=64), "lie in 1..64"),
        (Rule(gt=0, le=4096), "be > 0 and <= 4096"),
        (Rule(choices=(1, 3)), "be 1 or 3"),
        (Rule(choices=(0, 1), optional=True), "be 0 or 1 or null"),
        (Rule(choices=("safetensors",)), "be one of safetensors"),
        (Rule(choices=("a", "b", "c", "d")), "be one of a, b, c, d"),
        (Rule(choices=("a", "b"), min_len=1), "be 1 or more of a, b"),
        (Rule(ge=0, le=255, length=3), "be 3 values in 0..255"),
        (Rule(ge=2, note="(FID needs a covariance)"), "be >= 2 (FID needs a covariance)"),
    ],
)
def test_each_kind_of_rule_reads_as_a_condition(r: Rule, text: str) -> None:
    assert r.describe() == text
