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
