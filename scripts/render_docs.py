#!/usr/bin/env python
"""Re-render the docs' tables of measured numbers from their committed result JSON.

A doc opts in with marker comments (syntax in ``ddpm/tables.py``)::

    <!-- table: results/quality_budget_mnist_20min.json
    | recipe | steps | FID |
    |---|---:|---:|
    rows: | {name} | {steps:,} | {scores.fid:.2f} |
    -->
    <!-- /table -->

    <!-- command: results/quality_budget_mnist_20min.json -->
    <!-- /command -->

Usage::

    python scripts/render_docs.py             # rewrite README.md and docs/*.md; print each result file's command
    python scripts/render_docs.py --check     # exit 1 with a diff when a doc differs from its results
    python scripts/render_docs.py docs/benchmark.md

Paths in the markers are relative to the doc's folder. Every result JSON carries the command that wrote
it (``"command"``), printed here beside the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm.tables import DocTableError, command_of, doc_diff, docs_with_tables, render_doc

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("docs", nargs="*", type=Path, help="markdown files (default: README.md and docs/*.md)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 with a diff when a doc differs")
    args = p.parse_args(argv)
    docs = [d.resolve() for d in args.docs] or docs_with_tables(ROOT)
    differ, commands = [], {}
    for doc in docs:
        name = str(doc.relative_to(ROOT)) if doc.is_relative_to(ROOT) else str(doc)
        old = doc.read_text()
        try:
            new, sources = render_doc(old, doc.parent, name)
        except DocTableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for s in sources:
            key = (doc.parent / s.path).resolve()
            commands[key.relative_to(ROOT) if key.is_relative_to(ROOT) else key] = command_of(s.data, s.path)
        if new == old:
            continue
        differ.append(name)
        if args.check:
            sys.stdout.write(doc_diff(old, new, name))
        else:
            doc.write_text(new)
            print(f"rewrote {name}")
    for path, cmds in sorted(commands.items()):
        print(f"{path}:")
        for c in cmds:
            print(f"    {c}")
    if args.check and differ:
        print(
            f"error: {len(differ)} doc(s) differ from their results: {', '.join(differ)}; run python scripts/render_docs.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
