"""The shared result-table helpers (``ddpm/tables.py``): flattened result JSON and markdown tables."""

from __future__ import annotations

from ddpm.tables import flatten, format_cell, markdown_table


def test_flatten_keeps_scalars_under_dotted_keys() -> None:
    result = {"fid": 12.5, "config": {"lr": 1e-4}, "kid": {"mean": 0.25, "std": None}, "per_class": [1, 2], "n": 3}
    assert flatten(result) == {"fid": 12.5, "kid.mean": 0.25, "kid.std": None, "n": 3}
    # only the top-level config is the run's config; a nested one is a result like any other
    assert flatten({"a": {"config": 1}}) == {"a.config": 1}


def test_format_cell_formats_floats_only() -> None:
    assert format_cell(0.123456) == "0.1235"
    assert format_cell(93.981, ".2f") == "93.98"
    assert format_cell(1402) == "1402"
    assert format_cell(None) == "None"
    assert format_cell("dpm") == "dpm"


def test_markdown_table_is_the_exact_text() -> None:
    table = markdown_table(["variant", "step", "fid"], [["base", 1402, 93.981234], ["min-SNR", 636, 2633.58]])
    assert table == "| variant | step | fid |\n|---|---|---|\n| base | 1402 | 93.98 |\n| min-SNR | 636 | 2634 |"
    right = markdown_table(["recipe", "FID"], [["ours", 93.981]], float_format=".2f", align_right=True)
    assert right == "| recipe | FID |\n|---|---:|\n| ours | 93.98 |"
    assert markdown_table(["a"], []) == "| a |\n|---|"
