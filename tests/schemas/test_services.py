"""Micro-service metadata: the flat string map `nats micro info` shows, typed both ways."""

from __future__ import annotations

from llmq.schemas.services import ApiMetadata, WorkerMetadata


def test_worker_metadata_as_nats_shows_it() -> None:
    meta = WorkerMetadata(
        worker_id="w1",
        backend="echo",
        models=["a", "b:c"],
        capacity=4,
        in_flight=1,
        circuit="open",
        draining=True,
        host="h",
        pid=7,
    )
    shown = meta.to_metadata()
    assert shown == {
        "worker_id": "w1",
        "backend": "echo",
        "models": "a,b:c",
        "capacity": "4",
        "in_flight": "1",
        "circuit": "open",
        "draining": "true",
        "host": "h",
        "pid": "7",
    }
    assert WorkerMetadata.from_metadata(shown) == meta
    with_url = WorkerMetadata(worker_id="w", metrics_url="http://h:1/metrics")
    assert with_url.to_metadata()["metrics_url"] == "http://h:1/metrics"
    assert WorkerMetadata.from_metadata(with_url.to_metadata()) == with_url


def test_worker_metadata_missing_or_bad_values_read_as_defaults() -> None:
    meta = WorkerMetadata.from_metadata({"worker_id": "w", "capacity": "many"})
    assert meta == WorkerMetadata(worker_id="w")
    assert WorkerMetadata.from_metadata(None) == WorkerMetadata()


def test_api_metadata_both_ways() -> None:
    meta = ApiMetadata(
        instance_id="i1",
        host="h",
        listen="0.0.0.0:8000",
        port="8000",
        pid=3,
        open_streams=2,
        accepting=False,
    )
    shown = meta.to_metadata()
    assert shown == {
        "instance_id": "i1",
        "host": "h",
        "listen": "0.0.0.0:8000",
        "port": "8000",
        "pid": "3",
        "open_streams": "2",
        "accepting": "false",
    }
    assert ApiMetadata.from_metadata(shown) == meta
    assert ApiMetadata.from_metadata({}).accepting is True
