"""scripts/breakages.py (run by hand: each breakage put in, its tests run) stays runnable: every
entry's text is still in its file exactly once, and its tests' files exist. Cheap, so a refactor
that moves a guarded line finds out here, not the next time someone runs the breakages."""
import pytest

from scripts.breakages import BREAKAGES, ROOT


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda breakage: breakage.name)
def test_every_breakage_still_applies(breakage):
    count = (ROOT / breakage.path).read_text().count(breakage.text)
    assert count == 1, f"{breakage.name}: its text is in {breakage.path} {count} times; update scripts/breakages.py"
    assert breakage.tests and breakage.replacement != breakage.text
    for test in breakage.tests:
        assert (ROOT / test.split("::")[0]).is_file(), f"{breakage.name}: no test file {test}"
