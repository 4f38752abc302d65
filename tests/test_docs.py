"""The docs that make promises about behaviour stay tied to the tests that prove them."""

import ast
import re

from tests.conftest import REPO_ROOT


CATALOGUE = REPO_ROOT / "docs" / "bad-inputs.md"


def defined_tests(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_bad_input_catalogue_lists_at_least_15_inputs_each_proved_by_a_test_that_exists():
    rows = [line for line in CATALOGUE.read_text().splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 15
    for row in rows:
        cited = re.findall(r"`(tests/\w+\.py)::(\w+)`", row)
        assert cited, f"no test cited in: {row[:80]}"
        for path, name in cited:
            assert name in defined_tests(REPO_ROOT / path), (
                f"{path}::{name} cited in docs/bad-inputs.md does not exist"
            )


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def markdown_lines(page):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def anchors(page) -> set[str]:
    """The page's headings, slugged as GitHub does."""
    return {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower().replace("`", "")).replace(" ", "-")
        for _, line in markdown_lines(page)
        if line.startswith("#")
    }


def broken_links(pages) -> list[str]:
    broken = []
    for page in pages:
        for number, line in markdown_lines(page):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, fragment = target.partition("#")
                resolved = (page.parent / path).resolve() if path else page
                if not resolved.exists():
                    broken.append(f"{page.name}:{number}: {target}: no such file")
                elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                    broken.append(f"{page.name}:{number}: {target}: no such heading")
    return broken


def test_every_relative_link_of_the_docs_resolves():
    pages = [REPO_ROOT / "README.md", REPO_ROOT / "DEVELOPERS.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    assert broken_links(pages) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [gone](missing.md) [bad](#nowhere)\n```\n[fenced](skipped.md)\n```\n")
    assert broken_links([page]) == [
        "page.md:2: missing.md: no such file",
        "page.md:2: #nowhere: no such heading",
    ]
