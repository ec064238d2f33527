"""Shared pytest set-up.  Each area keeps its fixtures in its own module."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

pytest_plugins = ["fixtures_build", "fixtures_flash", "fixtures_moonraker"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    import hostile
    if hostile.CASES["count"]:
        terminalreporter.write_line(
            f"hostile-input cases run: {hostile.CASES['count']}")
