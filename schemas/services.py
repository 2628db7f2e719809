"""The metadata of llmq's NATS micro services, typed.

NATS micro metadata is a flat string map (what `nats micro info` shows), so each struct
says how it becomes one (`to_metadata`) and how it is read back (`from_metadata`). A key
an older process did not send, or a value that does not parse, reads as its default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from msgspec import Struct

from llmq.schemas.registry import WorkerInfo


class ServiceMetadata(Protocol):
    """What a micro service says about itself, as NATS carries it."""

    def to_metadata(self) -> dict[str, str]: ...


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


class WorkerMetadata(Struct, kw_only=True):
    """`llmq-worker`: who the worker is and its state right now."""

    worker_id: str = ""
    backend: str = ""
    models: list[str] = []
    capacity: int = 0
    in_flight: int = 0
    circuit: str = "closed"
    draining: bool = False
    host: str = ""
    pid: int = 0
    metrics_url: str = ""
    """Left out of the metadata when the worker serves no /metrics."""

    def to_metadata(self) -> dict[str, str]:
        meta = {
            "worker_id": self.worker_id,
            "backend": self.backend,
            "models": ",".join(self.models),
            "capacity": str(self.capacity),
            "in_flight": str(self.in_flight),
            "circuit": self.circuit,
            "draining": _flag(self.draining),
            "host": self.host,
            "pid": str(self.pid),
        }
        if self.metrics_url:
            meta["metrics_url"] = self.metrics_url
        return meta

    @classmethod
    def from_info(cls, info: WorkerInfo) -> WorkerMetadata:
        """The live part of a worker's registry entry."""
        return cls(
            worker_id=info.id,
            backend=info.backend,
            models=list(info.models),
            capacity=info.capacity,
            in_flight=info.in_flight,
            circuit=info.circuit,
            draining=info.draining,
            host=info.host,
            pid=info.pid,
            metrics_url=info.metrics_url,
        )

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str] | None) -> WorkerMetadata:
        meta = meta or {}
        models = meta.get("models", "")
        return cls(
            worker_id=meta.get("worker_id", ""),
            backend=meta.get("backend", ""),
            models=models.split(",") if models else [],
            capacity=_int(meta.get("capacity")),
            in_flight=_int(meta.get("in_flight")),
            circuit=meta.get("circuit") or "closed",
            draining=meta.get("draining", "") == "true",
            host=meta.get("host", ""),
            pid=_int(meta.get("pid")),
            metrics_url=meta.get("metrics_url", ""),
        )


class ApiMetadata(Struct, kw_only=True):
    """`llmq-api`: one api replica, where it listens and whether it takes requests."""

    instance_id: str = ""
    host: str = ""
    listen: str = ""
    port: str = ""
    """As configured, kept a string (it is shown, never dialled)."""
    pid: int = 0
    open_streams: int = 0
    accepting: bool = True

    def to_metadata(self) -> dict[str, str]:
        return {
            "instance_id": self.instance_id,
            "host": self.host,
            "listen": self.listen,
            "port": self.port,
            "pid": str(self.pid),
            "open_streams": str(self.open_streams),
            "accepting": _flag(self.accepting),
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str] | None) -> ApiMetadata:
        meta = meta or {}
        return cls(
            instance_id=meta.get("instance_id", ""),
            host=meta.get("host", ""),
            listen=meta.get("listen", ""),
            port=meta.get("port", ""),
            pid=_int(meta.get("pid")),
            open_streams=_int(meta.get("open_streams")),
            accepting=meta.get("accepting", "true") == "true",
        )
