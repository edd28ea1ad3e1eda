"""Stop sequences over streamed text: cut at the first, never send half of one."""

from __future__ import annotations


class StopMatcher:
    """Cuts the text at the first stop sequence, holding back a tail that could start one."""

    __slots__ = ("_held", "_stops")

    def __init__(self, stops: list[str]) -> None:
        self._stops = stops
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """The text that is safe to send now, and the stop sequence when one matched (then the
        answer ends there)."""
        if not self._stops:
            return text, None
        buf = self._held + text
        found: tuple[int, str] | None = None
        for stop in self._stops:
            at = buf.find(stop)
            if at >= 0 and (found is None or at < found[0]):
                found = (at, stop)
        if found is not None:
            self._held = ""
            return buf[: found[0]], found[1]
        keep = max(_partial_suffix(buf, stop) for stop in self._stops)
        self._held = buf[len(buf) - keep:]
        return buf[: len(buf) - keep], None

    def flush(self) -> str:
        """What was held back, once the text has ended without a match."""
        held, self._held = self._held, ""
        return held


def _partial_suffix(text: str, stop: str) -> int:
    for size in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0
