"""What an api process shows operators: Prometheus metrics and the request log (both serving
observers), and its presence as the NATS micro service `llmq-api`, one instance per replica
(`nats micro ls`, `llmq status`). Started and stopped by the app's lifespan."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

from nats.micro.service import EndpointInfo, EndpointStats

from llmq.api.engine.serving import Serving
from llmq.api.metrics import ApiMetrics
from llmq.api.request_log import RequestLog
from llmq.api.runtime import Runtime
from llmq.dispatcher.micro import LiveService
from llmq.schemas import names
from llmq.schemas.services import ApiMetadata

log = logging.getLogger(__name__)

DESCRIPTION = "llmq api: OpenAI-compatible HTTP in front of the job queue"


class ApiService(LiveService):
    """`llmq-api` with live metadata; its one endpoint reports the HTTP requests served."""

    def __init__(self, runtime: Runtime, metrics: ApiMetrics, version: str) -> None:
        super().__init__(runtime.nc, names.API_MICRO_SERVICE, version, DESCRIPTION)
        self._rt = runtime
        self._m = metrics
        self._host = socket.gethostname()
        self._refresh()

    def live_metadata(self) -> ApiMetadata:
        s = self._rt.settings
        return ApiMetadata(
            instance_id=s.api.instance_id,
            host=self._host,
            listen=f"{s.api.host}:{s.api.port}",
            port=str(s.api.port),
            pid=os.getpid(),
            open_streams=self._rt.open_streams,
            accepting=self._rt.accepting,
        )

    def _subject(self) -> str:
        return names.inbox_prefix(self._rt.settings.api.instance_id) + ".>"

    def endpoint_infos(self) -> list[EndpointInfo]:
        about = {"about": "HTTP requests; job replies arrive on this subject"}
        return [
            EndpointInfo(name="requests", subject=self._subject(), queue_group="", metadata=about)
        ]

    def endpoint_stats(self) -> list[EndpointStats]:
        m = self._m
        return [
            EndpointStats(
                name="requests",
                subject=self._subject(),
                queue_group="",
                num_requests=m.count,
                num_errors=m.errors,
                last_error=m.last_error,
                processing_time=m.busy_ns,
                average_processing_time=m.busy_ns // m.count if m.count else 0,
                data={"open_streams": self._rt.open_streams},
            )
        ]


class Observability:
    def __init__(self, metrics: ApiMetrics, service: ApiService | None) -> None:
        self.metrics = metrics
        self.service = service

    @classmethod
    async def start(cls, runtime: Runtime, serving: Serving, version: str) -> Observability:
        settings = runtime.settings
        metrics = ApiMetrics(runtime, version)
        serving.observers.append(metrics.observe)
        if settings.observability.request_log:
            serving.observers.append(RequestLog(settings.observability.log_json).observe)
        service = ApiService(runtime, metrics, version)
        try:
            await service.start()
        except Exception as exc:
            log.warning("could not register the %s micro service: %s", names.API_MICRO_SERVICE, exc)
            return cls(metrics, None)
        return cls(metrics, service)

    async def stop(self) -> None:
        if self.service is not None:
            with contextlib.suppress(Exception):
                await self.service.stop()
