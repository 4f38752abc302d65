"""Wall-clock assertions carry the `timing` marker (they may flake on a busy machine, and `-m "not timing"` must
leave a suite that cannot). What counts: a sleep against a lease, a rate window, a kill window, a deadline the
code under test must meet. A test that reads the clock itself is taken to assert on it unless it is marked; code
under test given a clock (PollClock, the client's injected sleep) needs no marker. A timeout that only stops a hung
subprocess (``subprocess.run(..., timeout=...)``) is not a wall-clock assertion.
"""

import ast

from tests.conftest import REPO_ROOT


CLOCK_READS = ("time.monotonic(", "time.time(", "time.perf_counter(", "time.sleep(", "datetime.now(")


def _marked_timing(source: str, decorators: list[ast.expr]) -> bool:
    return any("timing" in ast.get_source_segment(source, decorator) for decorator in decorators)


def unmarked_clock_readers() -> list[str]:
    found = []
    for path in sorted((REPO_ROOT / "tests").glob("test_*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        module_marker = any(
            isinstance(node, ast.Assign)
            and any(getattr(target, "id", "") == "pytestmark" for target in node.targets)
            and "timing" in ast.get_source_segment(source, node)
            for node in tree.body
        )
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            reads_clock = any(read in ast.get_source_segment(source, node) for read in CLOCK_READS)
            if reads_clock and not (module_marker or _marked_timing(source, node.decorator_list)):
                found.append(f"{path.name}::{node.name}")
    return found


def test_every_test_that_reads_the_clock_is_marked_timing():
    assert unmarked_clock_readers() == []
