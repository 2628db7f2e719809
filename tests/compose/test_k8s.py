"""compose/k8s as Kubernetes would take it: every manifest valid against the API's schemas
(`kubernetes-validate --strict`, no cluster needed), the kustomizations complete, KEDA
scaling on the consumers' lag, and settings that exist. A typo in a setting's name would be
silently ignored by the pods, so every `LLMQ_` variable must name a real setting.

The security policy every container must meet is tests/compose/test_k8s_policy.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmq.schemas import names
from llmq.schemas.settings import Settings
from llmq.schemas.settings.base import leaves

K8S = Path(__file__).resolve().parents[2] / "compose" / "k8s"
KUBERNETES = "1.31.0"
"""The oldest Kubernetes the manifests are checked against (they use nothing newer)."""
CUSTOM = {"ScaledObject"}
"""Kinds of CRDs (KEDA): no schema in kubernetes-validate; checked field by field below."""


def documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every manifest under compose/k8s (the overlays too), with its file."""
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def kustomization(folder: Path = K8S) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return loaded


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is missing: pip install -e '.[dev]'")
    checked = 0
    for _, doc in documents():
        if doc["kind"] in CUSTOM:
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises with the reason
        checked += 1
    assert checked >= 15
    # --strict judges: a misspelt field is an error
    broken = one("Deployment", "llmq-api")
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_cli_validates_the_files_too() -> None:
    """The same check as an operator runs it (CRDs are reported, not failed)."""
    binary = Path(__import__("sys").executable).parent / "kubernetes-validate"
    if not binary.exists():
        pytest.skip("kubernetes-validate is missing: pip install -e '.[dev]'")
    files = [str(p) for p in sorted(K8S.rglob("*.yaml")) if p.name != "kustomization.yaml"]
    files = [f for f in files if not f.endswith("keda.yaml")]
    done = subprocess.run(
        [str(binary), "--strict", "-k", KUBERNETES, *files],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_kustomizations_list_every_file_and_generate_every_secret(tmp_path: Path) -> None:
    base = kustomization()
    listed = set(base["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    overlay = kustomization(K8S / "openai")
    assert overlay["resources"] == ["../", "worker-openai.yaml"]
    for generator in base["configMapGenerator"]:
        for entry in generator["files"]:
            assert (K8S / entry.split("=")[-1]).is_file(), entry
    # the secrets come from make-secrets.sh, as the comment at the top says
    secrets = tmp_path / "secrets"
    hosts = "nats-0.nats-headless nats-1.nats-headless nats-2.nats-headless"
    subprocess.run(
        ["sh", str(K8S.parent / "make-secrets.sh"), str(secrets)],
        env={"ROUTE_HOSTS": hosts, "PATH": "/usr/bin:/bin"}, check=True, timeout=30,
    )  # fmt: skip
    for generator in base["secretGenerator"]:
        for entry in generator["files"]:
            source = entry.split("=")[-1]
            assert source.startswith("secrets/") and (secrets / source[8:]).exists(), entry
    routes = (secrets / "nats-routes.conf").read_text()
    for node in hosts.split():
        assert f"@{node}:6222" in routes
    # every Secret a pod names is generated (none is written in a manifest)
    generated = {g["name"] for g in base["secretGenerator"]}
    assert not [d for _, d in documents() if d["kind"] == "Secret"]
    for name in _secret_names():
        assert name in generated, name


def _secret_names() -> set[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                found.add(node["secretKeyRef"]["name"])
            if "secretName" in node:
                found.add(node["secretName"])
            if "secret" in node and isinstance(node["secret"], dict) and "name" in node["secret"]:
                found.add(node["secret"]["name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for _, doc in documents():
        walk(doc)
    return found


def test_keda_scales_the_workers_on_their_consumers_lag() -> None:
    scaled = one("ScaledObject", "llmq-worker-echo")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "llmq-worker-echo"
    one("Deployment", "llmq-worker-echo")
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"nats-jetstream"}
    by_stream = {t["metadata"]["stream"]: t["metadata"] for t in triggers}
    assert by_stream[names.JOBS_STREAM]["consumer"] == names.consumer_name(
        names.JOBS_STREAM, "echo"
    )
    assert by_stream[names.BATCH_STREAM]["consumer"] == names.consumer_name(
        names.BATCH_STREAM, "echo"
    )
    auth = (K8S / "nats" / "auth.conf").read_text()
    for meta in by_stream.values():
        assert int(meta["lagThreshold"]) > 0
        assert meta["natsServerMonitoringEndpoint"].startswith("nats-headless.llmq.")
        assert meta["natsServerMonitoringEndpoint"].endswith(":8222")
        assert f"  {meta['account']} {{" in auth  # the account llmq's streams live in


def test_a_three_node_jetstream_cluster_with_replicas_three() -> None:
    nats = one("StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["serviceName"] == "nats-headless"
    config = one("ConfigMap", "llmq-config")["data"]
    assert config["LLMQ_NATS_REPLICAS"] == "3"
    urls = config["LLMQ_NATS_URL"].split(",")
    assert urls == [f"nats://nats-{i}.nats-headless:4222" for i in range(3)]
    conf = (K8S / "nats" / "nats.conf").read_text()
    assert "jetstream {" in conf and "cluster {" in conf and 'include "auth.conf"' in conf


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "ConfigMap"])
def test_every_llmq_variable_is_a_real_setting(kind: str) -> None:
    known = {leaf.env for leaf in leaves(Settings)}
    used: set[str] = set()
    for _, doc in documents():
        if doc["kind"] != kind:
            continue
        if kind == "ConfigMap":
            used |= set(doc.get("data") or {})
            continue
        spec = doc["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            used |= set(env_of(container))
    llmq = {name for name in used if name.startswith("LLMQ_")}
    if kind != "StatefulSet":
        assert llmq, kind
    assert llmq <= known, llmq - known
