"""Fixtures most integration modules share: a fake OpenAI upstream per module (a module that needs
a fresh one per test, or another kind, defines its own ``fake``/``upstream``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import ServerThread


@pytest.fixture(scope="module")
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture(scope="module")
def upstream(fake: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake.app()) as server:
        yield server
