"""Run `python -m MODULE ARGS...` and print every garbage-collector pause of 50 ms or more
to stderr (`gc-pause gen=G ms=M objects=N`): `gc_watched.py -m llmq.cli api ...`.
`bench/open_streams.py --gc-watch` uses it to see whether a full collection over many open
streams stops a process long enough for the api's silence bound (3 ping intervals).
`GC_THRESHOLD=a,b,c` in the environment sets the collector's thresholds first (an
experiment: with a large third one, full collections all but stop)."""

from __future__ import annotations

import gc
import os
import runpy
import sys
import time
from typing import Any

LONG = 0.05


def main() -> None:
    flag, module, *rest = sys.argv[1:]
    assert flag == "-m", "usage: gc_watched.py -m MODULE [ARGS...]"
    sys.argv = [module, *rest]
    started = [0.0]
    threshold = os.environ.get("GC_THRESHOLD")
    if threshold:
        gc.set_threshold(*(int(part) for part in threshold.split(",")))

    def watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        if took >= LONG:
            objects = len(gc.get_objects(info["generation"]))
            print(
                f"gc-pause gen={info['generation']} ms={took * 1000:.0f} objects={objects}",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(watch)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
