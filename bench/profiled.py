"""Run `python -m MODULE ARGS...` with cProfile (timed by CPU time) switched on by SIGUSR1
and off by SIGUSR2, which also writes the stats so far to OUT:
`profiled.py OUT -m llmq.cli api ...`. `bench/compare.py --profile` sends the signals around
each measured run, so start-up, warm-up and shutdown stay out of the profile.

CPU time, not wall time: on a machine shared with other work a wall-clock profile charges
other processes' time to whatever was running."""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
import time
from types import FrameType


def main() -> None:
    out, flag, module, *rest = sys.argv[1:]
    assert flag == "-m", "usage: profiled.py OUT -m MODULE [ARGS...]"
    sys.argv = [module, *rest]
    profiler = cProfile.Profile(time.process_time)

    def on(_sig: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def off(_sig: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
