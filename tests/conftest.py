"""Shared fixtures of the maintainers' tests (kept minimal)."""

import pytest

from coursekit.simulator import SimulatorProcess


@pytest.fixture(scope="session")
def simulator():
    """One simulator process for the whole test session (zero latency)."""
    with SimulatorProcess(latency="zero") as sim:
        yield sim


@pytest.fixture
def sim(simulator):
    """The session simulator with fresh counters; its config is restored after the test."""
    original = simulator.config()
    simulator.reset()
    yield simulator
    simulator.configure(**original)
    simulator.reset()
