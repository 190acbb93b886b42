"""The data tables of docs/benchmarks.md and docs/results.md are what scripts/render_docs.py makes
of the committed result files: a table edited by hand, or a result file changed without
re-rendering, fails here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "render_docs.py"


def _render_docs():
    spec = importlib.util.spec_from_file_location("render_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_table_matches_its_committed_files():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout


def test_every_marker_names_a_known_table_and_every_table_is_shown():
    render_docs = _render_docs()
    names = [name for page in render_docs.markers().values() for name in page]
    assert len(names) > 20  # the check above looks at something
    unknown = sorted(set(names) - set(render_docs.TABLES))
    assert not unknown, f"markers naming no table: {unknown}"
    unused = sorted(set(render_docs.TABLES) - set(names))
    assert not unused, f"tables shown on no page: {unused}"


def test_a_hand_edited_cell_is_named_by_the_check():
    render_docs = _render_docs()
    page = "docs/benchmarks.md"
    text = (ROOT / page).read_text(encoding="utf-8")
    start = text.index("<!-- render: step-defaults -->")
    label = "| F400 | 5 | IDE, phantom, steps=5 (default)"
    row = text.index(label + " |", start)
    cell = text.index(" | ", row + len(label)) + 3
    end = text.index(" |", cell)
    edited = text[:cell] + "1.0" + text[end:]
    assert edited != text
    _, changed = render_docs.render_page(edited, page)
    assert changed == ["step-defaults"]
    _, unchanged = render_docs.render_page(text, page)
    assert unchanged == []


def test_an_unknown_or_unclosed_marker_is_an_error():
    render_docs = _render_docs()
    for text in ("<!-- render: no-such-table -->\n<!-- /render -->\n", "<!-- render: epoch -->\n| a |\n"):
        try:
            render_docs.render_page(text, "page.md")
        except SystemExit as error:
            assert "page.md" in str(error)
        else:
            raise AssertionError(f"accepted {text!r}")
