"""Every run file or benchmark result that the README or docs/ cite is in the repository."""

from __future__ import annotations

import glob
import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A cited path: under docs/runs/, docs/figures/ or bench/results/, up to a space, quote or bracket.
CITED = re.compile(r"(?:docs/runs|docs/figures|bench/results)/(?:[^\s`'\"()\[\]|,;{]|\{[^}]*\})*")


def _expand(path: str) -> list[str]:
    """Shell-style alternatives {a,b} expanded; placeholders <name> and the letters S, K, N
    standing for a seed (…-seedS) read as wildcards."""
    path = path.rstrip(".:")
    path = re.sub(r"<[^>]*>", "*", path)
    path = re.sub(r"seed[SKN]\b", "seed*", path)
    parts = re.split(r"\{([^}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def cited_paths() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for match in CITED.finditer(doc.read_text(encoding="utf-8")):
            found += [(doc.name, path) for path in _expand(match.group(0)) if path.rstrip("/*")]
    return sorted(set(found))


def test_the_docs_cite_evidence():
    assert len(cited_paths()) > 30  # the check below looks at something


@pytest.mark.parametrize("doc, path", cited_paths())
def test_every_cited_file_exists(doc, path):
    # The clean clone CI tests holds only committed files, so existing here means committed.
    assert glob.glob(str(ROOT / path)), f"{doc} cites {path}, which is not in the repository"


def test_every_relative_link_and_image_resolves():
    links = 0
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            links += 1
            assert (doc.parent / target.split("#")[0]).exists(), f"{doc.name} links to {target}, which does not exist"
    assert links > 5  # figures and cross-references are checked


def test_the_docs_link_only_inside_the_repository():
    for doc in DOCS:
        assert "../shared" not in doc.read_text(encoding="utf-8"), f"{doc.name} links outside the repository"


def test_every_test_that_reliability_md_names_exists():
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?`", text)
    # A name after a comma in the same cell belongs to the file named before it.
    cells = re.findall(r"`(?:(test_\w+\.py)::)?(test_\w+)`|`(test_\w+\.py)`", text)
    assert len(named) > 20
    current = None
    for file, function, bare in cells:
        if bare:
            assert (ROOT / "tests" / bare).is_file(), bare
            continue
        current = file or current
        assert current is not None, function
        source = (ROOT / "tests" / current).read_text(encoding="utf-8")
        assert re.search(rf"^def {function}\(", source, re.M), f"reliability.md names {current}::{function}, not found"
