"""The README and the pages under docs/ only link to files that exist in the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Markdown links and images: [text](target) or ![alt](target); web links and in-page anchors are not files.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_targets(page: Path) -> list[str]:
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text())]
    return [t for t in targets if t and not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_points_at_a_file(page):
    targets = relative_targets(page)
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_the_readme_links_to_the_tuning_log_and_shows_its_pictures():
    targets = relative_targets(ROOT / "README.md")
    assert "docs/fashion-mnist-tuning-log.md" in targets
    assert "docs/fashion-mnist-samples.png" in targets
