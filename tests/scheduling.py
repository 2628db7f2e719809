"""How the suite spreads over pytest-xdist workers (`-n auto --dist loadfile`, pyproject).

The suite waits far more than it computes (servers starting, streams, deadlines): on an idle
machine, two workers per core keep the cores busy; on a busy one (other work already takes
the CPU), one per core, so that the timing bounds keep the margin they were set with.

Files go out longest first: xdist hands whole files to whichever worker is free, in
collection order (`--no-loadscope-reorder`), so a long file started last would leave the
other workers idle at the end.
"""

from __future__ import annotations

import os
import time

import pytest

SLOWEST_FIRST = (
    "tests/api/tenancy/test_leases.py",
    "tests/e2e/test_fuzz.py",
    "tests/e2e/test_unread_streams.py",
    "tests/e2e/test_cluster_startup.py",
    "tests/api/test_memory_growth.py",
    "tests/e2e/test_leases.py",
    "tests/e2e/test_tenancy.py",
    "tests/cli/test_cli_auth.py",
    "tests/test_docs.py",
    "tests/api/test_redis_sentinel.py",
    "tests/e2e/test_deadlines.py",
    "tests/e2e/test_chaos.py",
    "tests/e2e/test_outages.py",
    "tests/e2e/test_schema_fuzz.py",
    "tests/e2e/test_batch_durability.py",
    "tests/e2e/test_dispatch_behaviour.py",
    "tests/cli/test_ops_cli.py",
    "tests/compose/test_nats_permissions.py",
    "tests/e2e/test_reservations.py",
    "tests/cli/test_dev.py",
    "tests/e2e/test_http_edge.py",
    "tests/e2e/test_cluster_failover.py",
    "tests/e2e/test_queue_admission.py",
    "tests/worker/test_runner_redelivery.py",
    "tests/e2e/test_batches.py",
    "tests/api/test_redis_cluster_failover.py",
    "tests/e2e/test_cache.py",
    "tests/e2e/test_drain.py",
    "tests/dispatcher/test_replicas.py",
    "tests/e2e/test_rolling_deploy.py",
    "tests/dispatcher/test_connection_auth.py",
    "tests/api/test_redis_cluster.py",
    "tests/e2e/test_backends_e2e.py",
    "tests/e2e/test_jobs.py",
    "tests/e2e/test_fair_share.py",
    "tests/dispatcher/test_registry_silence.py",
    "tests/e2e/test_responses_background.py",
    "tests/e2e/test_files.py",
    "tests/e2e/test_endpoints.py",
    "tests/e2e/test_key_limits.py",
    "tests/e2e/test_state_survives.py",
    "tests/e2e/test_fallbacks.py",
    "tests/e2e/test_every_limit.py",
)
"""The files that take longest (`pytest --durations=0`, summed per file), longest first; the
rest follow, those with more tests first (xdist's own order)."""

IDLE = 0.6
"""Share of the CPU that must be idle at the start for two workers per core."""
MOST_WORKERS = 8


def idle_share(seconds: float = 0.5) -> float:
    """The share of CPU time spent idle over `seconds` (/proc/stat), 0 where unknown."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, all

    try:
        idle0, all0 = sample()
        time.sleep(seconds)
        idle1, all1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (idle1 - idle0) / max(1, all1 - all0)


def auto_workers() -> int:
    """`-n auto`: two workers per core on an idle machine, one per core on a busy one (never
    fewer than 2)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    per_core = 2 if idle_share() >= IDLE else 1
    return max(2, min(MOST_WORKERS, per_core * cores))


def slowest_first(items: list[pytest.Item]) -> None:
    """Reorder `items` in place: the files of `SLOWEST_FIRST` in its order, then the others
    with more tests first; a file's tests stay together and in their order."""
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    counts: dict[str, int] = {}
    for item in items:
        counts[item.nodeid.split("::")[0]] = counts.get(item.nodeid.split("::")[0], 0) + 1

    def key(item: pytest.Item) -> tuple[int, int]:
        path = item.nodeid.split("::")[0]
        return (rank.get(path, len(rank)), -counts[path] if path not in rank else 0)

    items.sort(key=key)
