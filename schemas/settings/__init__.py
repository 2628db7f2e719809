"""All configuration, nested by concern. Every setting can be set as `LLMQ_<NAME>` in the
environment or, for the processes that take it, as a `--name` command-line flag (see
`leaves` for the flat names, flags and commands derived from the models)."""

from llmq.schemas.settings.base import Group, Leaf, leaves, setting
from llmq.schemas.settings.cache import CacheSettings
from llmq.schemas.settings.connection import ConnectionSettings
from llmq.schemas.settings.console import ConsoleSettings
from llmq.schemas.settings.edge import EdgeSettings
from llmq.schemas.settings.root import Settings
from llmq.schemas.settings.service import (
    ApiSettings,
    BatchSettings,
    ObservabilitySettings,
    ProtocolSettings,
)
from llmq.schemas.settings.storage import StorageSettings
from llmq.schemas.settings.tenancy import TenancySettings
from llmq.schemas.settings.worker import (
    AnthropicSettings,
    BackendSettings,
    EchoSettings,
    OllamaSettings,
    OpenAISettings,
    WorkerSettings,
)

__all__ = [
    "AnthropicSettings",
    "ApiSettings",
    "BackendSettings",
    "BatchSettings",
    "CacheSettings",
    "ConnectionSettings",
    "ConsoleSettings",
    "EchoSettings",
    "EdgeSettings",
    "Group",
    "Leaf",
    "ObservabilitySettings",
    "OllamaSettings",
    "OpenAISettings",
    "ProtocolSettings",
    "Settings",
    "StorageSettings",
    "TenancySettings",
    "WorkerSettings",
    "leaves",
    "setting",
]
