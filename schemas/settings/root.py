"""`Settings`: every group, one attribute each. Built from the environment; keyword
arguments may name a group (`api=ApiSettings(...)`) or any setting by its flat name
(`Settings(deadline=5, ollama_num_ctx=8192)`), which is how the command line passes flags."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmq.schemas.settings.base import route
from llmq.schemas.settings.cache import CacheSettings
from llmq.schemas.settings.connection import ConnectionSettings
from llmq.schemas.settings.console import ConsoleSettings
from llmq.schemas.settings.edge import EdgeSettings
from llmq.schemas.settings.service import (
    ApiSettings,
    BatchSettings,
    ObservabilitySettings,
    ProtocolSettings,
)
from llmq.schemas.settings.storage import StorageSettings
from llmq.schemas.settings.tenancy import TenancySettings
from llmq.schemas.settings.worker import BackendSettings, WorkerSettings


class Settings(BaseModel):
    """All configuration. Each group reads `LLMQ_<FIELD>` from the environment itself."""

    model_config = ConfigDict(extra="ignore")

    connection: ConnectionSettings = Field(default_factory=ConnectionSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    edge: EdgeSettings = Field(default_factory=EdgeSettings)
    tenancy: TenancySettings = Field(default_factory=TenancySettings)
    protocol: ProtocolSettings = Field(default_factory=ProtocolSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    backend: BackendSettings = Field(default_factory=BackendSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)

    @model_validator(mode="before")
    @classmethod
    def _route(cls, data: Any) -> Any:
        return route(cls, data) if isinstance(data, Mapping) else data
