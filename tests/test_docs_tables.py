"""The docs' tables of measured numbers are rendered from committed result JSON (``ddpm/tables.py``,
``scripts/render_docs.py``): every doc equals its re-rendered text, and the template rules hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddpm.tables import DocTableError, doc_diff, docs_with_tables, render_doc, render_template, wrap_command

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", docs_with_tables(REPO), ids=lambda p: str(p.relative_to(REPO)))
def test_every_doc_equals_its_results(doc: Path) -> None:
    old = doc.read_text()
    new, sources = render_doc(old, doc.parent, str(doc.relative_to(REPO)))
    assert new == old, f"{doc.relative_to(REPO)} differs from its results; run python scripts/render_docs.py\n" + doc_diff(
        old, new, doc.name
    )
    for s in sources:  # every result file a doc reads is committed beside the docs
        assert (doc.parent / s.path).resolve().is_relative_to(REPO / "docs" / "results"), s.path


def test_the_docs_hold_generated_tables() -> None:
    used = {s.path for doc in docs_with_tables(REPO) for s in render_doc(doc.read_text(), doc.parent)[1]}
    assert any("benchmark" in p for p in used) and any("quality_budget" in p for p in used)


RESULT = {
    "command": "python scripts/measure.py --out r.json",
    "peak": {"fp32": 170.04},
    "rows": [
        {"name": "ours", "steps": 9376, "scores": {"fid": 52.7008, "frac": 0.641}, "params": 177505},
        {"name": "theirs", "steps": 636, "scores": {"fid": 2633.58, "frac": 0.42}, "params": 6946625, "note": None},
    ],
    "real": {"scores": {"fid": 12.5188}},
}


def test_row_templates_select_filter_scale_and_fall_back() -> None:
    template = """
| recipe | steps | FID | confident | params | peak | note |
|---|---:|---:|---:|---:|---:|---|
rows: | {name} | {steps:,} | {scores.fid:.2f} | {scores.frac:.1%} | {params/1e6:.2f} M | {$.peak.fp32:.0f} | {note:|none} |
rows[name=ours]: | again {name} | | | | | | |
real: | real | | {scores.fid:.1f} | | | | |
"""
    assert render_template(template, RESULT).splitlines() == [
        "| recipe | steps | FID | confident | params | peak | note |",
        "|---|---:|---:|---:|---:|---:|---|",
        "| ours | 9,376 | 52.70 | 64.1% | 0.18 M | 170 | none |",
        "| theirs | 636 | 2633.58 | 42.0% | 6.95 M | 170 | none |",
        "| again ours | | | | | | |",
        "| real | | 12.5 | | | | |",
    ]
    assert render_template("rows.1: | {name} | {rows.0.name:|x} |", RESULT) == "| theirs | x |"
    assert render_template("$: | {rows.0.scores.fid*2:.1f} |", RESULT) == "| 105.4 |"
    assert render_template("rows.0: | {name:s} |", {"rows": [{"name": "a|b"}]}) == "| a\\|b |"  # a cell never splits


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("rows: | {scores.kid:.2f} |", "missing or null"),
        ("rows: | {note:.2f} |", "missing or null"),
        ("nothing: | {name} |", "no 'nothing'"),
        ("rows[name=nobody]: | {name} |", "selects nothing"),
        ("rows | {name} |", "expected"),
        ("rows: | {steps*x} |", "expected a dotted path"),
    ],
)
def test_template_errors_name_the_problem(template: str, message: str) -> None:
    with pytest.raises(DocTableError, match=message):
        render_template(template, RESULT)


def _doc(tmp_path: Path, text: str, **files: dict) -> Path:
    (tmp_path / "results").mkdir(exist_ok=True)
    for name, data in files.items():
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(data))
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    return doc


def test_render_doc_rewrites_only_the_marked_blocks(tmp_path: Path) -> None:
    text = """# A doc

Text with 12.5 by hand.

<!-- table: results/r.json
| recipe | FID |
|---|---:|
rows: | {name} | {scores.fid:.1f} |
-->
| recipe | FID |
|---|---:|
| ours | 99.9 |
<!-- /table -->

<!-- command: results/r.json -->
stale
<!-- /command -->

<!-- table: a=results/r.json b=results/s.json
| a | b |
|---|---|
$: | {a.rows.0.steps} | {b.rows.0.steps} |
-->
<!-- /table -->
"""
    other = {"command": ["python one.py", "python two.py"], "rows": [{"steps": 3}]}
    doc = _doc(tmp_path, text, r=RESULT, s=other)
    new, sources = render_doc(doc.read_text(), tmp_path)
    assert [s.path for s in sources] == ["results/r.json", "results/r.json", "results/r.json", "results/s.json"]
    assert "| ours | 52.7 |\n| theirs | 2633.6 |\n<!-- /table -->" in new and "99.9" not in new
    assert "```bash\npython scripts/measure.py --out r.json\n```\n<!-- /command -->" in new
    assert "| 9376 | 3 |" in new
    assert "Text with 12.5 by hand." in new
    assert render_doc(new, tmp_path)[0] == new  # rendering is idempotent
    assert "+| ours | 52.7 |" in doc_diff(text, new, "doc.md")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- table: results/none.json\n|a|\n-->\n<!-- /table -->\n", "not found"),
        ("<!-- table: results/nocmd.json\n|a|\n-->\n<!-- /table -->\n", "has no 'command'"),
        ("<!-- table: results/r.json\n|a|\n-->\n", "not every one is closed"),
        ("<!-- table: results/r.json -->\n<!-- /table -->\n", "needs a template"),
        ("<!-- table: results/r.json results/r.json\n|a|\n-->\n<!-- /table -->\n", "names each"),
    ],
)
def test_doc_errors_name_the_doc_and_line(tmp_path: Path, text: str, message: str) -> None:
    _doc(tmp_path, text, r=RESULT, nocmd={"rows": []})
    with pytest.raises(DocTableError, match=message):
        render_doc(text, tmp_path, "doc.md")


def test_long_commands_wrap_between_arguments() -> None:
    cmd = "python scripts/sampler_choice.py --ckpt outputs/run --samples 500 " + " ".join(
        f"--sampler 'DDPM {n} small var=sampler=ddpm sampler.steps={n}'" for n in (20, 50, 100)
    )
    wrapped = wrap_command(cmd, width=80)
    assert all(len(line) <= 80 for line in wrapped.splitlines())
    assert wrapped.replace(" \\\n    ", " ") == cmd
    assert all(line.startswith("    --sampler 'DDPM") for line in wrapped.splitlines()[1:])  # an option keeps its value
