"""The README is a short front page: its two commands, links that resolve, and no number without its source."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# A measured-looking number: a count out of a total (4/20) or a decimal (0.78).
MEASURED = re.compile(r"\b\d+/\d+\b|\b\d+\.\d+\b")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose_blocks(text: str) -> list[str]:
    """Paragraphs and list items outside fenced code blocks."""
    prose, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            prose.append("")
        elif not fenced:
            prose.append("\n-" + line[1:] if line.startswith("- ") else line)
    return [b for b in re.split(r"\n\s*\n|\n(?=-)", "\n".join(prose)) if b.strip()]


def broken_links(path: Path) -> list[str]:
    """Relative links in a markdown file whose file or heading anchor does not exist."""
    bad = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.name}: {target} (no such file)")
        elif anchor:
            headings = [re.sub(r"^#+ ", "", ln) for ln in dest.read_text().splitlines() if re.match(r"#+ ", ln)]
            if anchor not in {_slug(h) for h in headings}:
                bad.append(f"{path.name}: {target} (no such heading)")
    return bad


def unsourced_numbers(path: Path) -> list[str]:
    """Prose blocks that state a measured number without a link to the results page."""
    external = re.compile(r"\[[^\]]*\]\([a-z]+://[^)]*\)")  # a cited paper's number is not a measurement
    return [b.strip() for b in _prose_blocks(path.read_text())
            if MEASURED.search(external.sub("", b)) and "](docs/results.md#" not in b]


def test_front_page_is_short_and_keeps_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 120, "the front page should fit on two screens; move detail to docs/"
    assert "bash scripts/demo.sh    # set up .venv and run the simulated loop (wmpo demo)" in text
    assert "bash scripts/test.sh    # set up .venv and run the test suite (what CI runs: .ci/run)" in text
    assert "docs/real_robot.md" in text and "docs/results.md" in text


def test_every_number_on_the_front_page_links_to_its_command():
    assert unsourced_numbers(ROOT / "README.md") == []


def test_links_in_readme_and_docs_resolve():
    bad = [b for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] for b in broken_links(p)]
    assert bad == []


def test_the_checks_catch_a_broken_page(tmp_path):
    page = tmp_path / "README.md"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("# Results\n\n## Lift table\n")
    page.write_text("Base 14/100 ([r](docs/results.md#lift-table)).\n\nAfter 29/100 [p](https://x.org/1.2).\n\n"
                    "See [p 2511.09515](https://arxiv.org/abs/2511.09515).\n\n- a gap of 0.41\n\n"
                    "[x](docs/results.md#no-such) [y](docs/missing.md)\n")
    assert unsourced_numbers(page) == ["After 29/100 [p](https://x.org/1.2).", "- a gap of 0.41"]
    assert broken_links(page) == ["README.md: docs/results.md#no-such (no such heading)",
                                  "README.md: docs/missing.md (no such file)"]
