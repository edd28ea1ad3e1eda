"""Run a server under a profiler switched on and off by signals, like callgrind's zero and dump.

``python bench/profiled.py MODE OUT -m dragoman serve ...`` or ``python bench/profiled.py MODE OUT
bench/baseline.py ...``: the server runs as usual; SIGUSR1 starts a fresh measurement (after the caller's
warm-up), SIGUSR2 stops it and writes it to ``OUT``. MODE ``cprofile``: cProfile's stats (``pstats``
format; time, so a syscall's kernel time and the machine's load land in the calling function). MODE
``opcodes``: the bytecodes each Python function executed (a JSON list of [file, line, name, count]), a
deterministic count the machine cannot move. Only the main thread is measured, which is where the event
loop and every request's Python code run. This lives in bench so dragoman itself carries no profiling
code; ``breakdown.py`` drives it.
"""

from __future__ import annotations

import cProfile
import json
import os
import runpy
import signal
import sys
from collections import Counter
from types import CodeType, FrameType
from typing import Any


class Opcodes:
    """Bytecodes executed per code object, counted by a trace function (``f_trace_opcodes``)."""

    def __init__(self) -> None:
        self.counts: Counter[CodeType] = Counter()

    def start(self) -> None:
        self.counts.clear()
        sys.settrace(self._call)

    def _call(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        counts, code = self.counts, frame.f_code

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[code] += 1
            return local

        return local

    def dump(self, out: str) -> None:
        sys.settrace(None)
        rows = [[c.co_filename, c.co_firstlineno, c.co_qualname, n] for c, n in self.counts.items()]
        with open(out + ".tmp", "w") as f:
            json.dump(rows, f)


def main() -> None:
    mode, out, target, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    profiler: list[cProfile.Profile] = []
    opcodes = Opcodes()

    def start(_signum: int, _frame: FrameType | None) -> None:
        if mode == "opcodes":
            opcodes.start()
        else:
            profiler[:] = [cProfile.Profile()]
            profiler[0].enable()

    def dump(_signum: int, _frame: FrameType | None) -> None:
        if mode == "opcodes":
            opcodes.dump(out)
        elif profiler:
            profiler[0].disable()
            profiler[0].dump_stats(out + ".tmp")
        os.replace(out + ".tmp", out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)
    if target == "-m":
        sys.argv = [args[0], *args[1:]]
        runpy.run_module(args[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *args]
        runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main()
