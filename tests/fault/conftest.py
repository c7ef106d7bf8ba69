"""Prints one line per fault scenario at the end of the run (`make test` shows them)."""

from tests.fault.support import RESULTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if RESULTS:
        terminalreporter.section("fault suite: simulator in naive mode")
        for line in RESULTS:
            terminalreporter.write_line(line)
