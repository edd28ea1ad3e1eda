"""Which client ``x-request-id`` values are kept, and what replaces the rest."""

from __future__ import annotations

import pytest

from dragoman.core.request_ids import MAX_LENGTH, request_id


@pytest.mark.parametrize("value", [b"abc", b"req_123", b"4bf92f35-77b3-4da6", b"a.b:c/d+e=f@g", b"x" * MAX_LENGTH])
def test_a_safe_id_is_kept(value: bytes) -> None:
    assert request_id([(b"accept", b"*/*"), (b"x-request-id", value)]) == value.decode()


@pytest.mark.parametrize("value", [b"", b"x" * (MAX_LENGTH + 1), b"a b", b"a\nb", b"a\"b", b"a;b", b"a,b", b"<x>",
                                   "é".encode(), b"a\x00b"])
def test_anything_else_is_replaced_by_a_new_id(value: bytes) -> None:
    new = request_id([(b"x-request-id", value)])
    assert new != value.decode("latin-1") and new.startswith("req_") and len(new) == 24


def test_no_header_gives_a_new_id_each_time() -> None:
    ids = {request_id([]) for _ in range(100)}
    assert len(ids) == 100
