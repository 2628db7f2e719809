"""compose/k8s: valid YAML, the kinds and fields a deployment relies on, and settings that
exist. A typo in a setting's name would be silently ignored by the pods, so every `LLMQ_`
variable must name a real setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmq.schemas import names
from llmq.schemas.settings import Settings
from llmq.schemas.settings.base import leaves

K8S = Path(__file__).resolve().parents[2] / "compose" / "k8s"


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in ("nats-values.yaml", "kustomization.yaml"):
            continue
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def test_every_file_is_valid_yaml_with_kind_and_name() -> None:
    docs = _documents()
    assert {d["kind"] for d in docs} >= {
        "Namespace", "ConfigMap", "Secret", "Deployment", "Service", "ScaledObject",
    }  # fmt: skip
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"], doc
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {
        "kustomization.yaml", "nats-values.yaml",
    }  # fmt: skip


def test_nats_values_ask_for_a_three_node_jetstream_cluster() -> None:
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["monitor"]["enabled"] is True  # KEDA reads lag there
    config = _one("ConfigMap", "llmq-config")["data"]
    assert config["LLMQ_NATS_REPLICAS"] == "3"
    assert len(config["LLMQ_NATS_URL"].split(",")) == 3


def test_api_is_ready_on_ready_and_outlives_its_grace() -> None:
    deployment = _one("Deployment", "llmq-api")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["args"][0] == "api"
    grace = float(_env(container)["LLMQ_SHUTDOWN_GRACE"])
    assert pod["terminationGracePeriodSeconds"] > grace
    assert deployment["spec"]["replicas"] >= 2


def test_worker_drains_before_kubernetes_kills_it() -> None:
    pod = _one("Deployment", "llmq-worker-echo")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "worker"
    drain = float(_env(container)["LLMQ_DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_keda_scales_the_workers_on_their_consumers_lag() -> None:
    scaled = _one("ScaledObject", "llmq-worker-echo")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "llmq-worker-echo"
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"nats-jetstream"}
    by_stream = {t["metadata"]["stream"]: t["metadata"] for t in triggers}
    assert by_stream[names.JOBS_STREAM]["consumer"] == names.consumer_name(
        names.JOBS_STREAM, "echo"
    )
    assert by_stream[names.BATCH_STREAM]["consumer"] == names.consumer_name(
        names.BATCH_STREAM, "echo"
    )
    for meta in by_stream.values():
        assert int(meta["lagThreshold"]) > 0
        assert meta["natsServerMonitoringEndpoint"].endswith(":8222")


@pytest.mark.parametrize("kind", ["Deployment", "ConfigMap", "Secret"])
def test_every_llmq_variable_is_a_real_setting(kind: str) -> None:
    known = {leaf.env for leaf in leaves(Settings)}
    used: set[str] = set()
    for doc in _documents():
        if doc["kind"] != kind:
            continue
        if kind == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                used |= set(_env(container))
        else:
            used |= set(doc.get("data") or doc.get("stringData") or {})
    llmq = {name for name in used if name.startswith("LLMQ_")}
    assert llmq, kind
    assert llmq <= known, llmq - known
