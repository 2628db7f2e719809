"""CPU of requests waiting in one fair-share line: n requests of one tenant wait 1 s behind a
share of 1 (the in-process ledger, no Redis), so only the gate's own wake-ups cost anything.

    PYTHONPATH=$PWD .venv/bin/python bench/fair_share_waiters.py --waiters 2000
"""

from __future__ import annotations

import argparse
import asyncio
import time

from llmq.api.fair_ledger import LocalLedger
from llmq.api.fair_share import FairShare


async def waiting_cpu(waiters: int, seconds: float) -> float:
    gate = FairShare(lambda _model: 1, LocalLedger())
    await gate.enter("m", "a", 5)  # the one place, held throughout
    started = time.process_time()
    await asyncio.gather(*(gate.enter("m", "a", seconds) for _ in range(waiters)))
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--waiters", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    cpu = asyncio.run(waiting_cpu(args.waiters, args.seconds))
    print(f"{args.waiters} waiters for {args.seconds} s: {cpu:.3f} CPU s")


if __name__ == "__main__":
    main()
