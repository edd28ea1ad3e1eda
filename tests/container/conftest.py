"""Prints what the container tests measured (build times, image size, seconds to healthy) at the end."""

from __future__ import annotations

import pytest

FIGURES = pytest.StashKey[dict[str, float]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, None)
    if figures:
        terminalreporter.write_sep("-", "container figures (seconds; sizes in MB)")
        terminalreporter.write_line(", ".join(f"{name} {value:.1f}" for name, value in figures.items()))
