"""The security and operations policy every pod of compose/k8s must meet. `problems` lists
what a workload breaks; the suite asks for none, and shows that each check does catch a
manifest that breaks it.

Per pod: runAsNonRoot with a numeric user and group, the runtime's seccomp profile, no
service-account token for llmq's pods. Per container (init containers too): no privilege
escalation, every capability dropped, a read-only root filesystem, a pinned image with a pull
policy, CPU and memory requests and limits, and every credential from a Secret (a variable
named like one comes from a secretKeyRef; a `_FILE` points into a mounted Secret). Per main
container: startup, readiness and liveness probes. llmq's containers log in to NATS as their
own user with its own inbox, and the runtime ones never provision. Pods get longer than their
drain before SIGKILL, and the api pauses at preStop. NetworkPolicies: ingress denied by
default, a policy per component, NATS and Valkey reachable only from llmq's pods."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llmq.embedded import nats_server_binary
from tests.compose.test_k8s import K8S, documents, env_of, one

COMPOSE = K8S.parent
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
CREDENTIAL = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$|AUTH")
NATS_USERS = {"api": "api", "worker": "worker", "provision": "provision"}
"""llmq container name (or its prefix) -> its NATS user in nats/auth.conf."""
INBOXES = {"api": "_INBOX", "worker": "_INBOX_worker", "provision": "_INBOX_provision"}


def _pod_problems(pod: dict[str, Any], llmq: bool) -> list[str]:
    out = []
    ctx = pod.get("securityContext", {})
    if ctx.get("runAsNonRoot") is not True:
        out.append("pod: runAsNonRoot is not true")
    if ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        out.append("pod: no RuntimeDefault seccomp profile")
    if llmq and pod.get("automountServiceAccountToken") is not False:
        out.append("pod: mounts a service-account token")
    return out


def _container_problems(pod: dict[str, Any], c: dict[str, Any], init: bool) -> list[str]:
    name, out = c["name"], []
    pod_ctx, ctx = pod.get("securityContext", {}), c.get("securityContext", {})
    for field in ("runAsUser", "runAsGroup"):
        value = ctx.get(field, pod_ctx.get(field))
        if not isinstance(value, int) or value < 1:
            out.append(f"{name}: no numeric non-root {field}")
    if ctx.get("allowPrivilegeEscalation") is not False or ctx.get("privileged"):
        out.append(f"{name}: may escalate privileges")
    if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
        out.append(f"{name}: keeps capabilities")
    if ctx.get("readOnlyRootFilesystem") is not True:
        out.append(f"{name}: writable root filesystem")
    image = c.get("image", "")
    if ":" not in image or image.endswith(":latest") or not c.get("imagePullPolicy"):
        out.append(f"{name}: image {image!r} not pinned, or no imagePullPolicy")
    resources = c.get("resources", {})
    for part in ("requests", "limits"):
        for what in ("cpu", "memory"):
            if not resources.get(part, {}).get(what):
                out.append(f"{name}: no {what} {part}")
    if not init:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe not in c:
                out.append(f"{name}: no {probe}")
    return out + _credential_problems(pod, c)


def _secret_mounts(pod: dict[str, Any], c: dict[str, Any]) -> list[str]:
    """Mount paths of this container's volumes that hold Secrets."""
    secret_volumes = set()
    for volume in pod.get("volumes", []):
        sources = volume.get("projected", {}).get("sources", [])
        if "secret" in volume or any("secret" in s for s in sources):
            secret_volumes.add(volume["name"])
    return [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in secret_volumes]


def _credential_problems(pod: dict[str, Any], c: dict[str, Any]) -> list[str]:
    out, mounts = [], _secret_mounts(pod, c)
    for item in c.get("env", []):
        key = item["name"]
        if key.endswith("_FILE"):
            if not any(item.get("value", "").startswith(m + "/") for m in mounts):
                out.append(f"{c['name']}: {key} is not in a mounted Secret")
        elif CREDENTIAL.search(key):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if not ref or ref.get("optional"):
                out.append(f"{c['name']}: {key} does not come from a required Secret")
    return out


def _llmq_problems(c: dict[str, Any]) -> list[str]:
    """llmq's own containers: their NATS user, inbox and provisioning."""
    if not c.get("image", "").startswith("llmq:"):
        return []
    env, name = env_of(c), c["name"]
    user = NATS_USERS[name.split("-")[0]]
    out = []
    if env.get("LLMQ_NATS_USER") != user or not env.get("LLMQ_NATS_PASSWORD_FILE"):
        out.append(f"{name}: does not log in to NATS as {user}")
    if env.get("LLMQ_NATS_INBOX_PREFIX", "_INBOX") != INBOXES[user]:
        out.append(f"{name}: not on the inbox prefix of {user}")
    if user != "provision" and env.get("LLMQ_NATS_PROVISION") != "false":
        out.append(f"{name}: a runtime process that provisions NATS")
    return out


def _drain_problems(pod: dict[str, Any]) -> list[str]:
    grace, out = pod.get("terminationGracePeriodSeconds", 30), []
    for c in pod["containers"]:
        env = env_of(c)
        pause = 0
        command = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        if command[:1] == ["sleep"]:
            pause = int(command[1])
        if c["name"] == "api":
            if not pause:
                out.append("api: no preStop pause before SIGTERM")
            if grace < pause + float(env["LLMQ_SHUTDOWN_GRACE"]) + 5:
                out.append("api: terminationGracePeriodSeconds <= preStop + shutdown grace")
        if c["name"] == "worker" and grace < float(env["LLMQ_DRAIN_TIMEOUT"]) + 10:
            out.append("worker: terminationGracePeriodSeconds <= drain timeout")
    return out


def problems(doc: dict[str, Any]) -> list[str]:
    """What a workload breaks of the policy (nothing for other kinds)."""
    if doc["kind"] not in WORKLOADS:
        return []
    pod = doc["spec"]["template"]["spec"]
    llmq = doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "llmq"
    out = _pod_problems(pod, llmq) + _drain_problems(pod)
    for init, c in [(True, c) for c in pod.get("initContainers", [])] + [
        (False, c) for c in pod["containers"]
    ]:
        out += _container_problems(pod, c, init) + _llmq_problems(c)
    return [f"{doc['kind']}/{doc['metadata']['name']}: {p}" for p in out]


def test_every_workload_meets_the_policy() -> None:
    workloads = [doc for _, doc in documents() if doc["kind"] in WORKLOADS]
    assert {d["metadata"]["name"] for d in workloads} == {
        "llmq-api", "llmq-worker-echo", "llmq-worker-openai", "nats", "valkey",
    }  # fmt: skip
    found = [p for doc in workloads for p in problems(doc)]
    assert not found, "\n".join(found)


BREAKS = {
    "numeric user": lambda p: p["securityContext"].pop("runAsUser"),
    "named user": lambda p: p["securityContext"].update(runAsUser="llmq"),
    "non-root": lambda p: p["securityContext"].pop("runAsNonRoot"),
    "seccomp": lambda p: p["securityContext"].pop("seccompProfile"),
    "token": lambda p: p.pop("automountServiceAccountToken"),
    "escalation": lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
    "capabilities": lambda p: p["containers"][0]["securityContext"].pop("capabilities"),
    "read-only": lambda p: p["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"),
    "latest": lambda p: p["containers"][0].update(image="llmq:latest"),
    "pull policy": lambda p: p["containers"][0].pop("imagePullPolicy"),
    "memory limit": lambda p: p["containers"][0]["resources"]["limits"].pop("memory"),
    "cpu request": lambda p: p["containers"][0]["resources"]["requests"].pop("cpu"),
    "init limits": lambda p: p["initContainers"][0].pop("resources"),
    "startup probe": lambda p: p["containers"][0].pop("startupProbe"),
    "readiness probe": lambda p: p["containers"][0].pop("readinessProbe"),
    "liveness probe": lambda p: p["containers"][0].pop("livenessProbe"),
    "preStop": lambda p: p["containers"][0].pop("lifecycle"),
    "grace": lambda p: p.update(terminationGracePeriodSeconds=30),
    "token as a value": lambda p: p["containers"][0]["env"].append(
        {"name": "LLMQ_ADMIN_TOKEN", "value": "change-me"}
    ),
    "optional secret": lambda p: p["containers"][0]["env"][-2]["valueFrom"]["secretKeyRef"].update(
        optional=True
    ),
    "file outside a secret": lambda p: p["containers"][0]["env"].append(
        {"name": "LLMQ_NATS_PASSWORD_FILE", "value": "/tmp/password"}
    ),
    "provisioning api": lambda p: p["containers"][0]["env"].append(
        {"name": "LLMQ_NATS_PROVISION", "value": "true"}
    ),
    "wrong NATS user": lambda p: p["initContainers"][0]["env"][0].update(value="api"),
}


@pytest.mark.parametrize("what", sorted(BREAKS))
def test_the_policy_catches_a_manifest_that_breaks_it(what: str) -> None:
    api = copy.deepcopy(one("Deployment", "llmq-api"))
    assert not problems(api)
    env = api["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[-2]["name"] == "LLMQ_ADMIN_TOKEN"  # "optional secret" below edits it
    BREAKS[what](api["spec"]["template"]["spec"])
    # later duplicates win in Kubernetes; the policy reads them the same way
    assert problems(api), what


def test_network_policies_deny_by_default_and_admit_only_llmq_to_nats_and_valkey() -> None:
    policies = {
        d["metadata"]["name"]: d["spec"] for _, d in documents() if d["kind"] == "NetworkPolicy"
    }
    default = policies.pop("default-deny-ingress")
    assert default == {"podSelector": {}, "policyTypes": ["Ingress"]}
    selected = {name: p["podSelector"]["matchLabels"] for name, p in policies.items()}
    for _, doc in documents():
        if doc["kind"] in WORKLOADS:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            covering = [n for n, sel in selected.items() if sel.items() <= labels.items()]
            assert covering, f"{doc['metadata']['name']}: no NetworkPolicy of its own"
    for name, policy in policies.items():
        open_rules = [rule for rule in policy["ingress"] if "from" not in rule]
        if name == "llmq-api":  # the one door from outside
            assert open_rules == [{"ports": [{"port": 8000, "protocol": "TCP"}]}]
        else:
            assert not open_rules, name
    nats_clients = policies["nats"]["ingress"][0]
    assert nats_clients["ports"] == [{"port": 4222, "protocol": "TCP"}]
    assert nats_clients["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "llmq"}}}
    ]
    valkey = policies["valkey"]["ingress"]
    assert valkey == [
        {
            "from": [{"podSelector": {"matchLabels": selected["llmq-api"]}}],
            "ports": [{"port": 6379, "protocol": "TCP"}],
        }
    ]
    namespace = one("Namespace", "llmq")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def test_nats_and_valkey_read_the_configuration_compose_has(tmp_path: Path) -> None:
    assert (K8S / "nats" / "auth.conf").read_text() == (COMPOSE / "nats" / "auth.conf").read_text()
    valkey = one("ConfigMap", "llmq-valkey-config")["data"]["valkey.conf"]
    assert valkey == (COMPOSE / "valkey.conf").read_text()
    # the Kubernetes nats.conf, with generated secrets, is a valid nats-server configuration
    secrets = tmp_path / "secrets"
    hosts = "nats-0.nats-headless nats-1.nats-headless nats-2.nats-headless"
    subprocess.run(
        ["sh", str(COMPOSE / "make-secrets.sh"), str(secrets)],
        env={"ROUTE_HOSTS": hosts, "PATH": "/usr/bin:/bin"}, check=True, timeout=30,
    )  # fmt: skip
    etc = tmp_path / "etc-nats"
    etc.mkdir()
    for conf in ("nats.conf", "auth.conf"):
        shutil.copy(K8S / "nats" / conf, etc / conf)
    shutil.copy(secrets / "nats-users.conf", etc / "users.conf")
    shutil.copy(secrets / "nats-routes.conf", etc / "routes.conf")
    checked = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(etc / "nats.conf")],
        env={"NATS_NAME": "nats-0"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr + checked.stdout
    # mounted where the StatefulSet's config says, beside each other (includes are relative)
    pod = one("StatefulSet", "nats")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["-c", "/etc/nats/nats.conf"]
    (config,) = [v for v in pod["volumes"] if v["name"] == "config"]
    paths = [
        i["path"]
        for s in config["projected"]["sources"]
        for i in s.get("secret", {}).get("items", [])
    ]
    assert sorted(paths) == ["routes.conf", "users.conf"]
