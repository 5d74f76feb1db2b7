"""Result tables: the scalars of a result JSON as columns, the markdown tables the scripts print, and
the tables of the docs, generated from committed result JSON.

Shared by the dashboard (``ddpm/dashboard/runs.py``), the sweep collector and the measuring scripts,
so that a result file reads as the same columns and a table prints the same way everywhere; and by
``scripts/render_docs.py`` and ``tests/test_docs_tables.py``, so that a doc's table of measured numbers
is rendered from its result file and cannot drift from it.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Scalars of nested dicts as ``{"a.b": value}``; lists and a top-level ``config`` are left out.

    Args:
        obj: a parsed result JSON (``metrics.json``, ``regimes.json``, ...).
        prefix: the dotted path of ``obj`` inside the top-level object ('' at the top).
    """
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not prefix and k == "config":  # the run's whole config: not a result
                continue
            out.update(flatten(v, f"{prefix}{k}."))
    elif not isinstance(obj, list):
        out[prefix[:-1]] = obj
    return out


def format_cell(value: Any, float_format: str = ".4g") -> str:
    """A table cell: a float by ``float_format``, anything else as ``str``.

    Args:
        value: the cell's value.
        float_format: a format spec for floats (``.4g``, ``.2f``, ...).
    """
    return format(value, float_format) if isinstance(value, float) else str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], float_format: str = ".4g", align_right: bool = False) -> str:
    """A markdown table, one line per row, without a trailing newline.

    Args:
        header: the column names.
        rows: the cells of each row (as many as ``header``), formatted by :func:`format_cell`.
        float_format: the format spec of float cells.
        align_right: right-align every column but the first (columns of numbers).
    """

    def line(cells: Iterable[Any]) -> str:
        return "| " + " | ".join(format_cell(c, float_format) for c in cells) + " |"

    separator = "|---|" + ("---:|" if align_right else "---|") * (len(header) - 1)
    return "\n".join([line(header), separator, *(line(r) for r in rows)])


# --------------------------------------------------------------------------- docs generated from results
# A doc opts in with marker comments around a table (or a command) and names the committed result JSON
# it comes from; ``scripts/render_docs.py`` re-renders every block from its JSON (``--check``: exit 1
# with a diff when a doc differs) and ``tests/test_docs_tables.py`` fails when one does.
#
#     <!-- table: results/quality_budget.json
#     | recipe | steps | FID |
#     |---|---:|---:|
#     rows[name=ours]: | ours | {steps:,} | {scores.fid:.2f} |
#     real_test_reference: | real digits | | {scores.fid:.2f} |
#     -->
#     (the rendered table: written by the script, never by hand)
#     <!-- /table -->
#
#     <!-- command: results/quality_budget.json -->
#     (a bash block holding the JSON's "command")
#     <!-- /command -->
#
# The path is relative to the doc's own folder, as a markdown link is. Several files: name each,
# ``<!-- table: a=results/a.json b=results/b.json``, and start the selectors with the name (``a.rows``).
# Template lines starting with ``|`` are copied as they are (the header and its separator); a line
# ``SELECTOR: TEMPLATE`` renders TEMPLATE once for the object at the dotted path SELECTOR, or once per
# element when it is a list; ``[key=value,key2=value2]`` keeps the elements whose fields print as those
# values. TEMPLATE is a ``str.format`` string whose fields are dotted paths into that object
# (``{scores.fid:.2f}``, ``{rows.0.steps:,}``; ``$.`` starts at the file's top level: ``{$.peak.fp32:.0f}``),
# optionally scaled by a number or by another field of the row (``{params/1e6:.2f}``, ``{fraction*100:.0f}``,
# ``{t_C/t_C_theory:.3f}``). A field that is missing or null
# is an error, unless its format ends with ``|TEXT``: ``{fid:.2f|not run}`` prints TEXT instead.
# Every result JSON must carry the command that wrote it (``"command"``: a string or a list of strings).

BLOCK_RE = re.compile(r"<!-- (table|command):(.*?)-->\n(.*?)<!-- /\1 -->", re.DOTALL)
_FIELD_RE = re.compile(r"^(?P<path>[^*/]+?)\s*(?:(?P<op>[*/])\s*(?:(?P<num>[0-9.eE+-]+)|(?P<other>[$A-Za-z_][$\w.]*)))?$")
_SELECTOR_RE = re.compile(r"^(?P<path>[^\[\]]+?)(?:\[(?P<filter>[^\]]*)\])?$")
COMMAND_WIDTH = 110


class DocTableError(ValueError):
    """A marker, template or result file that cannot be rendered (names the doc and the block)."""


@dataclass(frozen=True)
class ResultSource:
    """One result JSON named by a block: its path as written in the doc, and its contents."""

    name: str | None
    path: str
    data: Any


def _lookup(obj: Any, path: str) -> Any:
    """The value at a dotted path (dict keys, list indices); raises KeyError when absent."""
    for part in path.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.lstrip("-").isdigit() and -len(obj) <= int(part) < len(obj):
            obj = obj[int(part)]
        else:
            raise KeyError(path)
    return obj


@dataclass(frozen=True)
class _Missing:
    """A field a row does not have (or holds null): printed as its fallback, else an error naming it."""

    field: str


class _RowFormatter(string.Formatter):
    """``str.format`` over one row: dotted paths, ``$.`` for the file's top, ``*N`` / ``/N`` (or a field), ``|fallback``."""

    def __init__(self, row: Any, root: Any) -> None:
        super().__init__()
        self.row, self.root = row, root

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        m = _FIELD_RE.match(field_name.strip())
        if not m:
            raise DocTableError(f"field {{{field_name}}}: expected a dotted path, optionally *N, /N, *PATH or /PATH")
        path = m["path"]
        try:
            value = _lookup(self.root, path[2:]) if path.startswith("$.") else _lookup(self.row, path)
        except KeyError:
            return _Missing(field_name), field_name
        if value is None:
            return _Missing(field_name), field_name
        if m["op"]:
            num = float(m["num"]) if m["num"] else self._operand(m["other"], field_name)
            value = value * num if m["op"] == "*" else value / num
        return value, field_name

    def _operand(self, path: str, field_name: str) -> Any:
        """The value of a field named as the operand (``{t_C/t_C_theory:.3f}``); absent is an error."""
        try:
            value = _lookup(self.root, path[2:]) if path.startswith("$.") else _lookup(self.row, path)
        except KeyError:
            value = None
        if not isinstance(value, (int, float)):
            raise DocTableError(
                f"field {{{field_name}}}: expected a dotted path, optionally *N or /N, or *PATH or /PATH of a number: {path!r} is not one"
            )
        return value

    def format_field(self, value: Any, format_spec: str) -> str:
        spec, bar, fallback = format_spec.partition("|")
        if isinstance(value, _Missing):
            if not bar:
                raise DocTableError(f"field {{{value.field}}} is missing or null (give a fallback: {{{value.field}:SPEC|TEXT}})")
            return fallback
        return format(value, spec).replace("|", "\\|")


def _select(root: Any, selector: str) -> list[Any]:
    """The objects a row template renders: the one at the path, or the (filtered) elements of a list."""
    m = _SELECTOR_RE.match(selector.strip())
    if not m:
        raise DocTableError(f"selector {selector!r}: expected PATH or PATH[key=value,...]")
    try:
        obj = root if m["path"] == "$" else _lookup(root, m["path"])
    except KeyError:
        raise DocTableError(f"selector {selector!r}: no {m['path']!r} in the result file") from None
    items = obj if isinstance(obj, list) else [obj]
    if m["filter"]:
        for cond in m["filter"].split(","):
            key, eq, want = cond.partition("=")
            if not eq:
                raise DocTableError(f"selector {selector!r}: a filter is key=value")
            items = [it for it in items if _filter_value(it, key.strip()) == want.strip()]
    if not items:
        raise DocTableError(f"selector {selector!r} selects nothing")
    return items


def _filter_value(item: Any, key: str) -> str | None:
    try:
        return str(_lookup(item, key))
    except KeyError:
        return None


def render_template(template: str, root: Any) -> str:
    """The markdown table a block's template gives for ``root`` (a result JSON, or named JSONs)."""
    out = []
    for raw in template.strip("\n").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("|"):
            out.append(line)
            continue
        selector, colon, row_template = line.partition(":")
        if not colon or not row_template.strip().startswith("|"):
            raise DocTableError(f"template line {line!r}: expected '| literal |' or 'SELECTOR: | {{field}} |'")
        for item in _select(root, selector):
            try:
                out.append(_RowFormatter(item, root).format(row_template.strip()))
            except (ValueError, TypeError) as exc:
                raise DocTableError(f"template line {line!r}: {exc}") from None
    return "\n".join(out)


def command_of(data: Any, path: str) -> list[str]:
    """The command(s) stored in a result JSON; a file without one is an error."""
    cmd = data.get("command") if isinstance(data, dict) else None
    if isinstance(cmd, str) and cmd.strip():
        return [cmd]
    if isinstance(cmd, list) and cmd and all(isinstance(c, str) and c.strip() for c in cmd):
        return cmd
    raise DocTableError(f"{path} has no 'command' (the command that wrote it: a string or a list of strings)")


def wrap_command(command: str, width: int = COMMAND_WIDTH) -> str:
    """A shell command over lines of at most ``width`` characters where it can, joined by `` \\``;
    an option (``--out x``) is never split from its value."""
    tokens = [shlex.quote(t) for t in shlex.split(command)]
    units: list[str] = []  # an option stays on the line of its value
    for tok in tokens:
        if units and units[-1].startswith("-") and " " not in units[-1] and not tok.startswith("-"):
            units[-1] += " " + tok
        else:
            units.append(tok)
    lines, cur = [], ""
    for tok in units:
        if cur and len(cur) + 1 + len(tok) > width - 2:
            lines.append(cur)
            cur = "    " + tok
        else:
            cur = f"{cur} {tok}" if cur else tok
    lines.append(cur)
    return " \\\n".join(lines)


def parse_sources(spec: str, base_dir: Path) -> list[ResultSource]:
    """The result files a marker names: ``path`` or ``name=path ...``, relative to the doc's folder."""
    sources = []
    for word in spec.split():
        name, eq, path = word.rpartition("=") if "=" in word else (None, "", word)
        if eq and not name:
            raise DocTableError(f"marker source {word!r}: expected NAME=PATH")
        file = base_dir / path
        try:
            data = json.loads(file.read_text())
        except FileNotFoundError:
            raise DocTableError(f"result file {path} not found (looked at {file})") from None
        except json.JSONDecodeError as exc:
            raise DocTableError(f"result file {path} is not JSON: {exc}") from None
        command_of(data, path)
        sources.append(ResultSource(name or None, path, data))
    if not sources:
        raise DocTableError("a marker names no result file")
    return sources


def _render_block(kind: str, header: str, base_dir: Path) -> tuple[str, list[ResultSource]]:
    first, _, template = header.partition("\n")
    sources = parse_sources(first, base_dir)
    if kind == "command":
        if template.strip():
            raise DocTableError("a command marker holds no template: <!-- command: results/x.json -->")
        cmds = [c for s in sources for c in command_of(s.data, s.path)]
        return "```bash\n" + "\n".join(wrap_command(c) for c in cmds) + "\n```", sources
    if len(sources) > 1 and any(s.name is None for s in sources):
        raise DocTableError("a table of several result files names each: NAME=PATH")
    root = sources[0].data if sources[0].name is None else {s.name: s.data for s in sources}
    if not template.strip():
        raise DocTableError("a table marker needs a template: header lines and SELECTOR: | {field} | lines")
    return render_template(template, root), sources


def render_doc(text: str, base_dir: Path, doc_name: str = "doc") -> tuple[str, list[ResultSource]]:
    """``text`` with every marked block re-rendered from its result JSON, and the files it read.

    Args:
        text: a markdown document.
        base_dir: the folder the markers' paths are relative to (the doc's own folder).
        doc_name: how errors name the doc.
    """
    used: list[ResultSource] = []

    def sub(m: re.Match) -> str:
        kind, header = m[1], m[2]
        line = text.count("\n", 0, m.start()) + 1
        try:
            body, sources = _render_block(kind, header, base_dir)
        except DocTableError as exc:
            raise DocTableError(f"{doc_name}:{line}: {kind} block: {exc}") from None
        used.extend(sources)
        return f"<!-- {kind}:{header}-->\n{body}\n<!-- /{kind} -->"

    new = BLOCK_RE.sub(sub, text)
    opened = len(re.findall(r"<!-- (?:table|command):", text))
    if opened != len(BLOCK_RE.findall(text)):
        raise DocTableError(f"{doc_name}: {opened} block(s) opened, but not every one is closed by <!-- /table --> or <!-- /command -->")
    return new, used


def doc_diff(old: str, new: str, name: str) -> str:
    """A unified diff of a doc against its re-rendered text ('' when equal)."""
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"{name} (committed)", f"{name} (rendered)"))


def docs_with_tables(root: Path) -> list[Path]:
    """The project's docs that may hold generated blocks: README.md and docs/*.md."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


# --------------------------------------------------------------------------- Hydra multiruns as result files
# ``scripts/collect_sweep.py`` gathers a multirun (one job folder per point, each with ``.hydra/``
# and a result JSON) into a CSV and, with ``--json``, into a result file for the docs: its rows and
# the commands that made it, the sweep command(s) recovered from Hydra's ``multirun.yaml``.


@dataclass(frozen=True)
class SweepJob:
    """One finished job of a multirun: its folder (relative to the sweep), overrides, config keys, result."""

    job: str
    overrides: dict[str, str]
    config: dict[str, Any]
    result: dict[str, Any]

    def csv_row(self) -> dict[str, Any]:
        """The job, its overrides as given, the config keys, and every scalar of the result (dotted)."""
        return {"job": self.job, **self.overrides, **self.config, **flatten(self.result)}

    def json_row(self) -> dict[str, Any]:
        """The result JSON (less its ``config``) with ``job``, ``overrides`` and ``config`` nested by dots,
        so that a doc's row template reads ``{t_C:.3f}``, ``{overrides.synthetic.n}``, ``{config.synthetic.sigma2}``."""
        values = {k: _yaml_scalar(v) for k, v in self.overrides.items()}
        rest = {k: v for k, v in self.result.items() if k not in ("config", "job", "overrides")}
        return {"job": self.job, "overrides": unflatten(values), "config": unflatten(self.config), **rest}


def _yaml_scalar(text: str) -> Any:
    """An override's value as Hydra reads it (``1000`` -> 1000, ``0.25`` -> 0.25), else the text."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) or value is None else text


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (the inverse of :func:`flatten` for scalars). A key that is
    both a value and a parent (a config group and a key in it: ``synthetic=mixture synthetic.d=8``)
    keeps its value under ``_value``: ``{"synthetic": {"_value": "mixture", "d": 8}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {} if part not in node else {"_value": child}
            node = child
        if isinstance(node.get(last), dict):
            node[last]["_value"] = value
        else:
            node[last] = value
    return out


def sweep_job_dirs(sweep: Path) -> list[Path]:
    """Job folders of a multirun (those with ``.hydra/``), shallow first, numeric names in numeric order."""
    jobs = [p.parent.parent for p in sweep.rglob(".hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: (len(p.relative_to(sweep).parts), int(p.name) if p.name.isdigit() else 0, str(p)))


def collect_sweep_jobs(sweep: Path, result: str, config_keys: Sequence[str] = ()) -> tuple[list[SweepJob], list[Path]]:
    """The jobs of a multirun that wrote ``result``, and the job folders that did not.

    Args:
        sweep: the multirun folder (``hydra.sweep.dir``); nested multiruns below it are included.
        result: the result JSON inside each job folder (``regimes.json``, ``metrics.json``).
        config_keys: dotted keys read from each job's ``.hydra/config.yaml``.
    """
    from omegaconf import OmegaConf

    jobs, missing = [], []
    for job in sweep_job_dirs(sweep):
        res = job / result
        if not res.is_file():
            missing.append(job)
            continue
        overrides = {}
        for item in OmegaConf.load(job / ".hydra" / "overrides.yaml"):
            key, _, value = str(item).partition("=")
            overrides[key.lstrip("+~")] = value
        config: dict[str, Any] = {}
        cfg_file = job / ".hydra" / "config.yaml"
        if config_keys and cfg_file.is_file():
            cfg = OmegaConf.load(cfg_file)
            config = {key: OmegaConf.select(cfg, key) for key in config_keys}
        jobs.append(SweepJob(str(job.relative_to(sweep)), overrides, config, json.loads(res.read_text())))
    return jobs, missing


def multirun_commands(sweep: Path) -> list[str]:
    """The command line of each multirun under ``sweep`` (shallow first), from Hydra's ``multirun.yaml``:
    ``ddpm-<config name> -m`` with the overrides as given (sweeps as ``key=a,b``), ``hydra.mode`` left out."""
    import yaml

    files = sorted(sweep.rglob("multirun.yaml"), key=lambda p: (len(p.relative_to(sweep).parts), str(p)))
    commands = []
    for f in files:
        hydra = (yaml.safe_load(f.read_text()) or {}).get("hydra", {})
        task = hydra.get("overrides", {}).get("task") or []
        own = [o for o in hydra.get("overrides", {}).get("hydra") or [] if not str(o).startswith("hydra.mode=")]
        name = hydra.get("job", {}).get("config_name") or hydra.get("job", {}).get("name")
        commands.append(shlex.join([f"ddpm-{name}", "-m", *map(str, task), *map(str, own)]))
    return commands
