"""``tests/run_integration.py``: ``make test``'s two integration processes, one status."""

from __future__ import annotations

from tests.run_integration import NO_TESTS, exit_status


def test_either_side_failing_fails_the_run():
    assert exit_status([0, 0]) == 0
    assert exit_status([1, 0]) == 1 and exit_status([0, 2]) == 2
    assert exit_status([NO_TESTS, 1]) == 1  # the first failure, whatever the other did


def test_a_side_with_nothing_selected_passes_while_the_other_ran_tests():
    assert exit_status([0, NO_TESTS]) == 0 and exit_status([NO_TESTS, 0]) == 0
    assert exit_status([NO_TESTS, NO_TESTS]) == NO_TESTS  # nothing ran at all
