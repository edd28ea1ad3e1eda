"""Several choices in one upstream answer (OpenAI's ``n`` passed through), as one canonical stream.

Each choice's flat deltas go through a :class:`PartTracker` of its own; choice 0's events stay plain
and the others' come wrapped in ``ChoiceEvent`` (see ``core/events.py``). The caller keeps choice
0's tracker (it starts the stream and carries the usage, once, for all choices).
"""

from __future__ import annotations

from dragoman.core.events import ChoiceEvent, Event, MessageEnd
from dragoman.core.parts import PartTracker
from dragoman.core.types import Usage
from dragoman.errors import ErrorKind, GatewayError


class ChoiceTrackers:
    """The trackers of choices 1..n-1; choice 0's is the stream's own tracker."""

    __slots__ = ("_ended", "_trackers", "n")

    def __init__(self, n: int, *, split_think_tags: bool = False) -> None:
        self.n = n
        self._trackers = [PartTracker(split_think_tags=split_think_tags) for _ in range(n - 1)]
        self._ended: set[int] = set()

    def tracker(self, choice: int) -> PartTracker:
        """Choice ``choice``'s tracker (1 <= choice < n); an upstream choice out of range is its error."""
        if not 1 <= choice < self.n:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream sent choice {choice}, asked for {self.n}")
        return self._trackers[choice - 1]

    def wrap(self, choice: int, events: list[Event]) -> list[Event]:
        """``events`` of choice ``choice``, ended here if the upstream said how it finished."""
        tracker = self.tracker(choice)
        if tracker.finished and choice not in self._ended:
            events = events + self._end(choice)
        return [ChoiceEvent(choice, e) for e in events]

    def end(self) -> list[Event]:
        """The ends of the choices still open when the stream ended, before choice 0's end."""
        return [ChoiceEvent(c, e) for c in range(1, self.n) if c not in self._ended for e in self._end(c)]

    def _end(self, choice: int) -> list[Event]:
        self._ended.add(choice)
        events = self._trackers[choice - 1].end()
        last = events[-1]
        assert isinstance(last, MessageEnd)
        events[-1] = MessageEnd(last.finish_reason, Usage(), last.stop_sequence)  # usage: the stream's end
        return events
