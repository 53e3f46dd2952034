"""The docs stay truthful about what exists: every relative link of the README, docs/ and benchmarks/results/
(pages, results files, images) points at a file in the repository, and every results file is named on the
"Measured" page (issue 33)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks/results").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def broken_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t) and not (page.parent / t).exists()]


def test_every_relative_link_exists():
    assert {str(p.relative_to(ROOT)): bad for p in PAGES if (bad := broken_links(p))} == {}


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("![plot](missing.png) [ok](p.md) [web](https://example.com) [anchor](p.md#x)")
    assert broken_links(page) == ["missing.png"]


def test_every_results_file_is_on_the_measured_page():
    measured = (ROOT / "docs" / "measured.md").read_text()
    assert [p.name for p in sorted((ROOT / "benchmarks/results").glob("*.md")) if p.name not in measured] == []
