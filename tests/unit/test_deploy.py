"""Offline validation of ``deploy/``: compose, Kubernetes, systemd, RabbitMQ, Docker, Grafana.

Nothing here needs a Docker engine, a cluster or the network:

- every YAML document parses; Kubernetes objects of built-in kinds validate against the
  Kubernetes JSON Schemas bundled in ``kubernetes-validate`` (strict: unknown fields fail);
  custom resources (RabbitmqCluster, KEDA, PodMonitor) get structural checks;
- the compose file validates against the compose specification's JSON Schema (vendored in
  ``check-jsonschema``) and is checked for consistency;
- every ``eeszt-gw`` command line (container args, probes, health checks, ``ExecStart=``) is
  parsed by the real ``eeszt_gw.cli.build_parser()`` and turned into the real settings object;
- references between objects (Secrets, ConfigMaps, scale targets, NetworkPolicy selectors,
  named ports, volumes) resolve; the RabbitMQ definitions make quorum the default queue type
  and grant a HIS exactly what deploy/README.md says.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import hashlib
import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from eeszt_gw.cli import build_parser
from eeszt_gw.config import env_of, load
from schemas.payloads import PAYLOAD_TYPES
from schemas.wire import QUEUE_CLASSES, REPLIES_EXCHANGE, REQUESTS_EXCHANGE

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"
RABBITMQ_CONF = DEPLOY / "rabbitmq" / "rabbitmq.conf"
DASHBOARD = DEPLOY / "grafana" / "eeszt-gateway.json"
SYSTEMD = DEPLOY / "systemd"

#: Kubernetes versions the built-in objects must validate against (oldest supported, newest)
K8S_VERSIONS = ("1.30", "latest")
BUILTIN_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1"}
CUSTOM_GROUPS = {"rabbitmq.com/v1beta1", "keda.sh/v1alpha1", "monitoring.coreos.com/v1"}
CLUSTER_SCOPED = {"Namespace"}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: the compose broker's users and the passwords deploy/README.md documents for them
COMPOSE_PASSWORDS = {"eeszt-gateway": "gateway-dev", "eeszt-admin": "admin-dev",
                     "his-demo": "his-demo-dev"}

METRICS: dict[str, set[str]] = {
    "eeszt_requests_total": {"service", "outcome"},
    "eeszt_request_duration_seconds_bucket": {"service", "le"},
    "eeszt_sts_calls_total": {"method"},
    "eeszt_token_cache_hits_total": set(),
    "eeszt_parked_total": {"service"},
    "eeszt_dead_lettered_total": {"service"},
    "eeszt_circuit_open": {"service"},
    "eeszt_certificate_days_left": {"certificate"},
    "eeszt_bridge_logins_total": {"workstation", "outcome"},
}
REQUEST_OUTCOMES = {"accepted", "rejected", "failed", "retrying", "parked", "waiting",
                    "dead-lettered"}


# --- loading --------------------------------------------------------------------------------
def yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml"))


def kustomization() -> dict:
    return yaml_docs(K8S / "kustomization.yaml")[0]


def kustomize_build() -> list[dict]:
    """What ``kubectl apply -k deploy/k8s`` would send, for the transformers this base uses:
    resources, namespace, labels (not on selectors) and images."""
    kz = kustomization()
    images = {i["name"]: i for i in kz.get("images", [])}
    out = []
    for res in kz["resources"]:
        for obj in yaml_docs(K8S / res):
            obj = json.loads(json.dumps(obj))  # deep copy
            if kz.get("namespace") and obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kz["namespace"]
            for group in kz.get("labels", []):
                obj["metadata"].setdefault("labels", {}).update(group["pairs"])
                assert group.get("includeSelectors") is False
            for spec in pod_specs(obj):
                for c in spec.get("containers", []) + spec.get("initContainers", []):
                    name, _, tag = c["image"].partition(":")
                    if name in images:
                        c["image"] = f"{images[name]['newName']}:{images[name]['newTag']}"
            out.append(obj)
    return out


def example_secrets() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in yaml_docs(K8S / "examples" / "secrets.example.yaml")}


def pod_template(obj: dict) -> dict | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return None


def pod_specs(obj: dict) -> Iterator[dict]:
    t = pod_template(obj)
    if t is not None:
        yield t["spec"]


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT (the final stage's)."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("ENTRYPOINT")]
    return json.loads(lines[-1].split(None, 1)[1])


def eeszt_gw_args(argv: list[str]) -> list[str]:
    """The arguments after ``eeszt-gw`` in a command line (``tini --`` allowed before it)."""
    for i, word in enumerate(argv):
        if os.path.basename(word) == "eeszt-gw":
            return argv[i + 1:]
    raise AssertionError(f"not an eeszt-gw command: {argv}")


def parse(args: list[str]):
    """Parse with the real CLI; argparse errors (SystemExit) fail the test with the args.

    Flags must be spelt out: argparse would accept an abbreviation (``--queue``), which breaks
    as soon as another flag shares the prefix.
    """
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # pragma: no cover - the failure path
        raise AssertionError(f"eeszt-gw rejects {args!r} (exit {exc.code})") from None
    current, flags = parser, set()
    for word in args:
        flags |= {o for a in current._actions for o in a.option_strings}
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and word in subs[0].choices:
            current = subs[0].choices[word]
    flags |= {o for a in current._actions for o in a.option_strings}
    for word in args:
        if word.startswith("-") and not re.match(r"^-?\d", word):
            assert word.split("=", 1)[0] in flags, f"{word!r} is not a flag of eeszt-gw (abbreviated?)"
    return ns


def settings_classes() -> dict[str, type]:
    from card_bridge.settings import BridgeSettings
    from simulator.settings import SimulatorSettings
    from workers.settings import WorkerSettings

    return {"worker": WorkerSettings, "card-bridge": BridgeSettings,
            "simulator": SimulatorSettings}


def settings_for(ns, env: dict[str, str] | None = None, monkeypatch=None):
    """Build the settings object the command would build: flags + EESZT_* environment (+ the
    --config file), through the real eeszt_gw.config.load."""
    cls = settings_classes()[ns.cmd]
    if monkeypatch is not None:
        for k in list(os.environ):
            if k.startswith("EESZT_"):
                monkeypatch.delenv(k)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, str(v))
    s = load(cls, ns, ns.cmd)
    if ns.cmd == "worker":
        s.queue_classes()
    return s


def env_names(command: str) -> set[str]:
    """The environment variables one command reads."""
    cls = settings_classes()[command]
    return {env_of(cls, f) for f in cls.model_fields}


def known_env_names() -> set[str]:
    return set().union(*(env_names(c) for c in settings_classes()))


def selector_matches(match_labels: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in match_labels.items())


# --- every file parses ----------------------------------------------------------------------
def test_every_yaml_and_json_file_under_deploy_parses():
    yamls = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(yamls) >= 12
    for path in yamls:
        docs = yaml_docs(path)
        assert docs, f"{path} has no YAML document"
        assert all(isinstance(d, dict) for d in docs), path
    for path in DEPLOY.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))


def test_every_k8s_object_has_apiversion_kind_and_name():
    seen = Counter()
    for path in k8s_yaml_files():
        for obj in yaml_docs(path):
            if path.name == "kustomization.yaml":
                assert obj["kind"] == "Kustomization"
                continue
            assert obj.get("apiVersion") in BUILTIN_GROUPS | CUSTOM_GROUPS, (path, obj.get("apiVersion"))
            assert obj.get("kind"), path
            name = obj.get("metadata", {}).get("name")
            assert name and DNS1123.match(name) and len(name) <= 63, (path, name)
            seen[(obj["kind"], name)] += 1
    assert not [k for k, n in seen.items() if n > 1], "duplicate objects"


def test_kustomization_lists_every_base_manifest_and_leaves_examples_out():
    kz = kustomization()
    listed = set(kz["resources"])
    for res in listed:
        assert (K8S / res).is_file(), res
    top = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == top, f"not listed: {top - listed}; missing: {listed - top}"
    assert not any(r.startswith(("examples/", "optional/")) for r in listed)
    assert kz["namespace"] == "eeszt"
    # every object of the build ends up in that namespace (namespaced ones)
    for obj in kustomize_build():
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == "eeszt"
    for obj in [*yaml_docs(K8S / "examples" / "secrets.example.yaml"),
                *yaml_docs(K8S / "optional" / "podmonitor.yaml")]:
        assert obj["metadata"].get("namespace") == "eeszt", obj["metadata"]["name"]


def _builtin_objects() -> list[tuple[str, dict]]:
    objs = [(f"{o['kind']}/{o['metadata']['name']}", o) for o in kustomize_build()]
    objs += [(f"example {o['kind']}/{o['metadata']['name']}", o)
             for o in yaml_docs(K8S / "examples" / "secrets.example.yaml")]
    return [(i, o) for i, o in objs if o["apiVersion"] in BUILTIN_GROUPS]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_objects_validate_against_the_kubernetes_schemas(version):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    v = latest_version() if version == "latest" else version
    objs = _builtin_objects()
    kinds = {o["kind"] for _, o in objs}
    assert {"Namespace", "ConfigMap", "Deployment", "NetworkPolicy", "Secret",
            "PodDisruptionBudget", "CronJob", "ServiceAccount"} <= kinds
    errors = []
    for ident, obj in objs:
        try:
            kubernetes_validate.validate(obj, v, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{ident}: {exc.message} at {'/'.join(map(str, exc.path))}")
    assert not errors, "\n".join(errors)


def test_the_schema_validation_catches_a_typo():
    """Guard against a validator that passes everything (e.g. a schema it did not find)."""
    import kubernetes_validate

    dep = json.loads(json.dumps(by_kind(kustomize_build(), "Deployment")["eeszt-worker-batch"]))
    dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, "1.30", strict=True)


# --- workers on Kubernetes -------------------------------------------------------------------
def worker_deployments() -> dict[str, dict]:
    return {n: d for n, d in by_kind(kustomize_build(), "Deployment").items()
            if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "eeszt-worker"}


def container_argv(container: dict) -> list[str]:
    """The full command line of a container: its command, or the image's entrypoint, + args."""
    return list(container.get("command") or entrypoint()) + list(container.get("args", []))


def test_one_worker_deployment_per_queue_class():
    classes = {}
    for name, dep in worker_deployments().items():
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        ns = parse(eeszt_gw_args(container_argv(c)))
        assert ns.cmd == "worker" and not getattr(ns, "check", False), name
        assert ns.queues in QUEUE_CLASSES, f"{name}: one queue class per pool, got {ns.queues}"
        classes[ns.queues] = name
        assert dep["metadata"]["labels"]["eeszt-gateway/queue-class"] == ns.queues
        assert dep["spec"]["template"]["metadata"]["labels"]["eeszt-gateway/queue-class"] == ns.queues
    assert set(classes) == set(QUEUE_CLASSES)


def test_worker_deployments_are_complete(monkeypatch):
    cm = by_kind(kustomize_build(), "ConfigMap")["eeszt-worker-config"]["data"]
    for name, dep in worker_deployments().items():
        spec, tmpl = dep["spec"], dep["spec"]["template"]
        assert "replicas" not in spec, f"{name}: KEDA's HPA owns the replica count"
        assert selector_matches(spec["selector"]["matchLabels"], tmpl["metadata"]["labels"])
        pod = tmpl["spec"]
        assert pod["terminationGracePeriodSeconds"] >= 60
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        (c,) = pod["containers"]
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            cmd = c[probe]["exec"]["command"]
            pns = parse(eeszt_gw_args(cmd))
            assert pns.cmd == "worker" and pns.check is True, (name, probe)
            assert c[probe]["timeoutSeconds"] >= 5
        # the settings the container really builds: args + ConfigMap + Secrets (placeholders)
        env = dict(cm)
        env.update({e["name"]: "amqp://u:p@h:5672/%2F" if e["name"] == "EESZT_BROKER_URL"
                    else base64.b64encode(b"k" * 32).decode() for e in c["env"]})
        ns = parse(eeszt_gw_args(container_argv(c)))
        s = settings_for(ns, env, monkeypatch)
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        # heartbeats go to a writable, mounted folder (the root file system is read-only)
        hb = mounts[str(s.heartbeat_dir)]
        assert not hb.get("readOnly") and "emptyDir" in volumes[hb["name"]]
        assert "/tmp" in mounts
        # the PKI folder holds exactly what the worker reads from --pki-dir
        pki = mounts[str(s.pki_dir)]
        assert pki["readOnly"] is True
        files = {item["path"] for src in volumes[pki["name"]]["projected"]["sources"]
                 for item in src["secret"]["items"]}
        import dataclasses

        from workers.client.client import ClientFiles

        need = {p.name for p in dataclasses.astuple(ClientFiles.from_pki_dir(s.pki_dir))}
        assert need | {"challenge.key"} <= files, need - files
        # one /metrics endpoint per worker process, on named container ports, on all addresses
        ports = {p["containerPort"]: p["name"] for p in c["ports"]}
        want = range(s.metrics_port, s.metrics_port + s.processes)
        assert set(want) <= set(ports), f"{name}: metrics ports {list(want)} not all declared"
        assert ports[s.metrics_port] == "metrics" and s.metrics_host == "0.0.0.0"


def test_the_probe_command_really_reports_health(tmp_path, capsys):
    """Run the probe the manifests use: 1 without a heartbeat, 0 with a fresh one."""
    from eeszt_gw.cli import main

    probe = worker_deployments()["eeszt-worker-interactive"]["spec"]["template"]["spec"][
        "containers"][0]["livenessProbe"]["exec"]["command"]
    args = eeszt_gw_args(probe) + ["--heartbeat-dir", str(tmp_path)]
    assert main(args) == 1
    (tmp_path / "worker-4242.json").write_text(json.dumps(
        {"pid": 4242, "at": time.time(), "queues": ["eeszt.interactive"], "threads": 16}))
    assert main(args) == 0
    assert "healthy" in capsys.readouterr().out


def test_configmap_names_only_real_worker_settings(monkeypatch):
    from workers.settings import WorkerSettings

    data = by_kind(kustomize_build(), "ConfigMap")["eeszt-worker-config"]["data"]
    prefix_ok = {n for n in known_env_names() if n.startswith("EESZT_")
                 and not n.startswith("EESZT_SIM_")} & env_names("worker")
    assert set(data) <= prefix_ok, set(data) - prefix_ok
    for k in list(os.environ):
        if k.startswith("EESZT_"):
            monkeypatch.delenv(k)
    for k, v in data.items():
        assert isinstance(v, str), f"{k}: ConfigMap values must be strings"
        monkeypatch.setenv(k, v)
    WorkerSettings()  # every value has the right type and range


def test_every_referenced_secret_and_configmap_exists():
    objs = kustomize_build()
    secrets = example_secrets()
    configmaps = by_kind(objs, "ConfigMap")
    used_secrets: set[str] = set()

    def need_secret(name: str, key: str | None, optional: bool, where: str):
        used_secrets.add(name)
        if optional:
            return
        assert name in secrets, f"{where}: Secret {name} has no example"
        if key is not None:
            assert key in secrets[name].get("stringData", {}) | secrets[name].get("data", {}), (
                f"{where}: Secret {name} has no key {key}")

    for obj in objs:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        for spec in pod_specs(obj):
            for c in spec["containers"]:
                for ef in c.get("envFrom", []):
                    if "configMapRef" in ef:
                        assert ef["configMapRef"]["name"] in configmaps, where
                    if "secretRef" in ef:
                        need_secret(ef["secretRef"]["name"], None, ef["secretRef"].get("optional", False), where)
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {})
                    if "secretKeyRef" in ref:
                        r = ref["secretKeyRef"]
                        need_secret(r["name"], r["key"], r.get("optional", False), where)
                    if "configMapKeyRef" in ref:
                        assert ref["configMapKeyRef"]["key"] in configmaps[ref["configMapKeyRef"]["name"]]["data"]
            mounted = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
            for v in spec.get("volumes", []):
                assert v["name"] in mounted, f"{where}: volume {v['name']} is never mounted"
                srcs = [{"secret": v["secret"]}] if "secret" in v else v.get("projected", {}).get("sources", [])
                for src in srcs:
                    if "secret" in src:
                        s = src["secret"]
                        name = s.get("name") or s.get("secretName")
                        keys = [i["key"] for i in s.get("items", [])] or [None]
                        for key in keys:
                            need_secret(name, key, s.get("optional", False), where)
            sa = spec.get("serviceAccountName")
            if sa:
                assert sa in by_kind(objs, "ServiceAccount"), where
        if obj["kind"] == "TriggerAuthentication":
            for ref in obj["spec"]["secretTargetRef"]:
                need_secret(ref["name"], ref["key"], False, where)
    assert set(secrets) <= used_secrets, f"example Secrets nobody uses: {set(secrets) - used_secrets}"


def test_example_secrets_are_placeholders_and_urls_parse():
    import pika

    for name, s in example_secrets().items():
        assert s["type"] == "Opaque" and "data" not in s, name
        for key, value in s["stringData"].items():
            if value.startswith("-----BEGIN"):
                assert "PLACEHOLDER" in value, f"{name}/{key} looks like a real key"
            if value.startswith("amqp"):
                p = pika.URLParameters(value)
                assert p.host.endswith(".svc") and "CHANGE-ME" in value
                rabbit = by_kind(kustomize_build(), "RabbitmqCluster")
                assert p.host.split(".")[0] in rabbit, f"{name}: {p.host} is not the cluster's Service"


# --- KEDA --------------------------------------------------------------------------------------
SCALEDOBJECT_SPEC_KEYS = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                          "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "advanced",
                          "triggers", "fallback"}
TRIGGER_KEYS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
RABBITMQ_TRIGGER_METADATA = {"host", "protocol", "mode", "value", "activationValue", "queueName",
                             "vhostName", "hostFromEnv", "unsafeSsl", "useRegex",
                             "excludeUnacknowledged", "pageSize", "operation", "timeout"}


def test_scaledobjects_target_the_worker_deployments_on_their_queue():
    objs = kustomize_build()
    deployments = worker_deployments()
    scaled = by_kind(objs, "ScaledObject")
    auths = by_kind(objs, "TriggerAuthentication")
    targets = Counter()
    for name, so in scaled.items():
        spec = so["spec"]
        assert set(spec) <= SCALEDOBJECT_SPEC_KEYS, set(spec) - SCALEDOBJECT_SPEC_KEYS
        ref = spec["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment"
        dep = deployments[ref["name"]]
        targets[ref["name"]] += 1
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        queue = QUEUE_CLASSES[parse(eeszt_gw_args(container_argv(c))).queues]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        if queue == QUEUE_CLASSES["interactive"]:
            assert spec["minReplicaCount"] >= 2, "a prescription must never wait for a cold start"
        if "fallback" in spec:
            assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert set(trigger) <= TRIGGER_KEYS
        meta = trigger["metadata"]
        assert trigger["type"] == "rabbitmq"
        assert set(meta) <= RABBITMQ_TRIGGER_METADATA, set(meta) - RABBITMQ_TRIGGER_METADATA
        assert all(isinstance(v, str) for v in meta.values()), "trigger metadata values are strings"
        assert meta["mode"] == "QueueLength" and meta["queueName"] == queue
        assert float(meta["value"]) > 0
        assert "host" not in meta, "the AMQP URL comes from the TriggerAuthentication"
        assert trigger["authenticationRef"]["name"] in auths
    assert set(targets) == set(deployments) and max(targets.values()) == 1
    for auth in auths.values():
        params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
        assert "host" in params


# --- RabbitMQ cluster and NetworkPolicies ------------------------------------------------------
RABBITMQCLUSTER_SPEC_KEYS = {"replicas", "image", "imagePullSecrets", "service", "persistence",
                             "resources", "affinity", "tolerations", "rabbitmq", "tls", "override",
                             "terminationGracePeriodSeconds", "skipPostDeploySteps",
                             "delayStartSeconds", "secretBackend", "autoEnableAllFeatureFlags"}


def rabbitmq_conf(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, sep, value = line.partition("=")
            assert sep, f"not a key = value line: {line!r}"
            out[key.strip()] = value.strip()
    return out


def test_rabbitmq_cluster_has_three_nodes_and_quorum_default():
    (cluster,) = by_kind(kustomize_build(), "RabbitmqCluster").values()
    spec = cluster["spec"]
    assert set(spec) <= RABBITMQCLUSTER_SPEC_KEYS, set(spec) - RABBITMQCLUSTER_SPEC_KEYS
    assert spec["replicas"] == 3
    assert set(spec["rabbitmq"]) <= {"additionalConfig", "additionalPlugins", "advancedConfig",
                                     "envConfig", "erlangInetConfig"}
    assert rabbitmq_conf(spec["rabbitmq"]["additionalConfig"])["default_queue_type"] == "quorum"
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": cluster["metadata"]["name"]}


def test_the_workers_declare_quorum_queues_where_the_broker_defaults_to_them():
    # Both brokers default to quorum; the workers say quorum themselves (EESZT_QUEUE_TYPE), so
    # their queues carry x-queue-type quorum and at-least-once dead-lettering.
    data = by_kind(kustomize_build(), "ConfigMap")["eeszt-worker-config"]["data"]
    assert data["EESZT_QUEUE_TYPE"] == "quorum"
    for name, dep in by_kind(kustomize_build(), "Deployment").items():  # the worker pools
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert {"configMapRef": {"name": "eeszt-worker-config"}} in container["envFrom"], name
        assert "--queue-type" not in container.get("args", []), name
    services = compose()["services"]
    for name in ("worker-interactive", "worker-batch"):
        assert services[name]["environment"]["EESZT_QUEUE_TYPE"] == "quorum"


def test_networkpolicies_fence_the_workers():
    objs = kustomize_build()
    policies = by_kind(objs, "NetworkPolicy")
    (cluster_name,) = by_kind(objs, "RabbitmqCluster")
    rabbit_pods = {"app.kubernetes.io/name": cluster_name}  # the operator's pod label
    # every pod we run is selected by a policy with both directions
    for obj in objs:
        t = pod_template(obj)
        if t is None:
            continue
        sel = [p for p in policies.values()
               if selector_matches(p["spec"]["podSelector"]["matchLabels"], t["metadata"]["labels"])]
        assert sel, f"{obj['kind']}/{obj['metadata']['name']} is not fenced by any NetworkPolicy"
        for p in sel:
            assert set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    worker = policies["eeszt-worker"]["spec"]
    selected = [d for d in worker_deployments().values()
                if selector_matches(worker["podSelector"]["matchLabels"],
                                    d["spec"]["template"]["metadata"]["labels"])]
    assert len(selected) == len(QUEUE_CLASSES)
    # ingress: only Prometheus, only the metrics port, which every selected pod names
    (rule,) = worker["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    allowed = [p["port"] for p in rule["ports"]]
    assert allowed[0] == "metrics"
    for d in selected:
        ports = {p["name"]: p["containerPort"] for c in d["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        assert set(allowed) == set(ports), "ingress must allow exactly the metrics ports"
    # egress: RabbitMQ (5672/5671), DNS (53), EESZT (443) and nothing else
    seen = set()
    for rule in worker["egress"]:
        ports = {p["port"] for p in rule["ports"]}
        seen |= ports
        if ports == {5672, 5671}:
            assert rule["to"] == [{"podSelector": {"matchLabels": rabbit_pods}}]
        elif ports == {53}:
            assert rule["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        elif ports == {443}:
            assert "ipBlock" in rule["to"][0]
            assert "169.254.0.0/16" in rule["to"][0]["ipBlock"]["except"]
        else:
            raise AssertionError(f"unexpected egress rule {rule}")
    assert seen == {5672, 5671, 53, 443}
    ops = policies["eeszt-ops"]["spec"]
    assert "ingress" not in ops and {p["port"] for r in ops["egress"] for p in r["ports"]} == {5672, 5671, 53}


def test_poddisruptionbudgets_select_the_worker_pools():
    objs = kustomize_build()
    pdbs = by_kind(objs, "PodDisruptionBudget")
    for dep in worker_deployments().values():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert any(selector_matches(p["spec"]["selector"]["matchLabels"], labels) for p in pdbs.values())


def test_dlq_retention_cronjob_is_a_valid_purge():
    (cron,) = by_kind(kustomize_build(), "CronJob").values()
    (c,) = pod_template(cron)["spec"]["containers"]
    ns = parse(eeszt_gw_args(container_argv(c)))
    assert (ns.cmd, ns.sub, ns.older_than, ns.why) == ("dlq", "purge", "30d", "retention")
    assert not ns.all and not ns.dry_run


def test_images_come_from_the_kustomization():
    kz = kustomization()
    (img,) = kz["images"]
    expected = f"{img['newName']}:{img['newTag']}"
    for obj in kustomize_build():
        for spec in pod_specs(obj):
            for c in spec["containers"]:
                assert c["image"] == expected
    (cluster,) = by_kind(kustomize_build(), "RabbitmqCluster").values()
    assert re.match(r"^rabbitmq:4\.\d+", cluster["spec"]["image"])


def test_optional_podmonitor_scrapes_the_metrics_port():
    (pm,) = yaml_docs(K8S / "optional" / "podmonitor.yaml")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    for dep in worker_deployments().values():
        assert selector_matches(pm["spec"]["selector"]["matchLabels"],
                                dep["spec"]["template"]["metadata"]["labels"])
    for dep in worker_deployments().values():
        ports = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} == ports


# --- compose ---------------------------------------------------------------------------------
def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        assert op is None, f"unsupported substitution {m.group(0)}"
        return env.get(name, "")

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", sub, value)


def compose(env: dict[str, str] | None = None) -> dict:
    """The compose file as `docker compose config` would see it with ``env`` exported."""
    return interpolate(yaml_docs(COMPOSE_FILE)[0], env or {})


def test_compose_file_validates_against_the_compose_specification():
    import jsonschema

    schema = json.loads((importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
                         / "compose-spec.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    bad = json.loads(json.dumps(compose()))
    bad["services"]["simulator"]["healthcheck"]["intervall"] = "5s"
    assert list(cls(schema).iter_errors(bad)), "the compose schema must catch a typo"


def _compose_eeszt_gw_commands(svc: dict) -> list[list[str]]:
    """Every eeszt-gw command line of a service: its command (through the image's entrypoint or
    a `sh -c` script) and its health check."""
    out = []
    cmd = svc.get("command")
    ep = svc.get("entrypoint")
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    if ep and ep[0] == "sh":
        script = " ".join(cmd)
        for part in re.split(r";|&&|\|\||\bthen\b|\belse\b|\bfi\b", script):
            words = shlex.split(part)
            if words and words[0] == "eeszt-gw":
                out.append(words[1:])
    elif cmd is not None and "image" in svc and svc["image"].startswith("eeszt-gateway"):
        out.append(eeszt_gw_args(entrypoint() + cmd))
    hc = svc.get("healthcheck", {}).get("test")
    if hc and "eeszt-gw" in hc:
        out.append(eeszt_gw_args(hc[1:]))
    return out


def test_compose_services_run_real_eeszt_gw_commands(monkeypatch):
    c = compose()
    services = c["services"]
    queues = set()
    for name, svc in services.items():
        for args in _compose_eeszt_gw_commands(svc):
            ns = parse(args)
            env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
            assert set(env) <= known_env_names(), set(env) - known_env_names()
            if ns.cmd in ("worker", "simulator", "card-bridge"):
                # every variable is one this command reads (the gateway's commands share EESZT_)
                assert set(env) <= env_names(ns.cmd), (name, set(env) - env_names(ns.cmd))
                s = settings_for(ns, env, monkeypatch)
                if ns.cmd == "worker" and not ns.check:
                    queues.add(ns.queues)
                    assert str(s.pki_dir) == "/pki"
                    host = urllib.parse.urlsplit(s.eeszt_url)
                    assert host.hostname in services, s.eeszt_url
                    sim = parse(_compose_eeszt_gw_commands(services[host.hostname])[0])
                    assert host.port == sim.port
                    broker = urllib.parse.urlsplit(s.broker_url)
                    assert broker.hostname in services
                    assert COMPOSE_PASSWORDS[broker.username] == broker.password
                    assert len(base64.b64decode(s.token_key.get_secret_value())) == 32
                if ns.cmd == "worker" and ns.check:
                    assert name.startswith("worker-")
            if ns.cmd == "pki":
                assert ns.sub == "init" and "simulator" in ns.host
    assert queues == set(QUEUE_CLASSES)
    for name in ("worker-interactive", "worker-batch"):
        assert services[name]["healthcheck"]["test"][:4] == ["CMD", "eeszt-gw", "worker", "--check"]


def test_compose_services_volumes_and_dependencies_are_consistent():
    c = compose()
    services = c["services"]
    declared = set(c["volumes"])
    used = set()
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            want = "service_completed_successfully" if dep == "pki" else "service_healthy"
            assert cond["condition"] == want, (name, dep)
            if want == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck to wait for"
        for vol in svc.get("volumes", []):
            src, target = vol.split(":")[:2]
            if src.startswith("."):
                assert (COMPOSE_FILE.parent / src).resolve().is_file(), src
            else:
                assert src in declared, f"{name}: undeclared volume {src}"
                used.add(src)
        if name != "pki":
            assert "healthcheck" in svc, f"{name} has no healthcheck"
            assert svc["restart"] == "unless-stopped"
    assert used == declared, f"volumes nobody mounts: {declared - used}"
    assert services["pki"]["restart"] == "no"
    # the PKI is written by one service and only read by the others
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            if vol.startswith("pki:"):
                assert vol.endswith(":ro") == (name != "pki"), name
    build = services["worker-batch"]["build"]
    root = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert root == ROOT and (root / build["dockerfile"]).resolve() == DOCKERFILE
    # the broker loads the definitions from where rabbitmq.conf says
    mounts = dict(v.split(":")[:2][::-1] for v in services["rabbitmq"]["volumes"])
    conf = rabbitmq_conf(RABBITMQ_CONF.read_text())
    assert (COMPOSE_FILE.parent / mounts[conf["load_definitions"]]).resolve() == DEFINITIONS
    assert any(t.startswith("/etc/rabbitmq/conf.d/") and t.endswith(".conf") for t in mounts)
    assert services["rabbitmq"]["image"].startswith("rabbitmq:4.")


# --- RabbitMQ definitions and tenant permissions ----------------------------------------------
def definitions() -> dict:
    return json.loads(DEFINITIONS.read_text())


def test_definitions_make_quorum_the_default_queue_type():
    d = definitions()
    assert d["vhosts"]
    for vhost in d["vhosts"]:
        assert vhost["metadata"]["default_queue_type"] == "quorum", vhost["name"]
    assert rabbitmq_conf(RABBITMQ_CONF.read_text())["default_queue_type"] == "quorum"
    for q in d["queues"]:
        assert q["arguments"].get("x-queue-type", "quorum") == "quorum"
    (policy,) = d["policies"]
    assert policy["definition"]["dead-letter-strategy"] == "at-least-once"
    assert policy["definition"]["overflow"] == "reject-publish"  # at-least-once needs it
    assert policy["apply-to"] == "quorum_queues"
    for q in ("eeszt.interactive", "eeszt.batch.retry.30s", "eeszt.dlq"):
        assert re.search(policy["pattern"], q)


def test_definitions_password_hashes_match_the_documented_passwords():
    users = {u["name"]: u for u in definitions()["users"]}
    assert set(users) == set(COMPOSE_PASSWORDS)
    for name, user in users.items():
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        raw = base64.b64decode(user["password_hash"])
        salt, digest = raw[:4], raw[4:]
        assert hashlib.sha256(salt + COMPOSE_PASSWORDS[name].encode()).digest() == digest, name
    readme = (DEPLOY / "README.md").read_text()
    for name, password in COMPOSE_PASSWORDS.items():
        assert f"`{name}`" in readme and f"`{password}`" in readme


def _may(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def assert_his_permissions(perm: dict, topics: dict[str, dict], his: str) -> None:
    """A HIS may publish requests and read its own replies, and nothing else."""
    own_queue, own_key = f"his.{his}.replies", f"his.{his}"
    assert not any(_may(perm["configure"], r) for r in
                   (own_queue, REQUESTS_EXCHANGE, REPLIES_EXCHANGE, "eeszt.interactive", "x"))
    assert _may(perm["write"], REQUESTS_EXCHANGE)
    for other in (REPLIES_EXCHANGE, "eeszt.interactive", "eeszt.dlq", "amq.default", own_queue,
                  f"{REQUESTS_EXCHANGE}.unrouted", "eeszt.requestsX"):
        assert not _may(perm["write"], other), other
    assert _may(perm["read"], own_queue)
    for other in ("his.other.replies", f"his.{his}.replies2", f"x{own_queue}", "eeszt.interactive",
                  "eeszt.dlq", REPLIES_EXCHANGE, "eeszt.audit", "eeszt.card.WS-01"):
        assert not _may(perm["read"], other), other
    req, rep = topics[REQUESTS_EXCHANGE], topics[REPLIES_EXCHANGE]
    assert all(_may(req["write"], t) for t in PAYLOAD_TYPES)
    assert not _may(req["read"], "erecept.submit")
    assert _may(rep["read"], own_key) and not _may(rep["read"], "his.other")
    assert not _may(rep["read"], f"{own_key}.x") and not _may(rep["write"], own_key)


def test_definitions_demo_his_reads_only_its_own_replies():
    d = definitions()
    (perm,) = [p for p in d["permissions"] if p["user"] == "his-demo"]
    topics = {t["exchange"]: t for t in d["topic_permissions"] if t["user"] == "his-demo"}
    assert_his_permissions(perm, topics, "demo")
    (binding,) = d["bindings"]
    assert (binding["source"], binding["destination"], binding["routing_key"]) == (
        REPLIES_EXCHANGE, "his.demo.replies", "his.demo")
    # declared exactly as the gateway declares it, or the workers would fail on start-up
    (exchange,) = d["exchanges"]
    assert (exchange["name"], exchange["type"], exchange["durable"], exchange["arguments"]) == (
        REPLIES_EXCHANGE, "topic", True, {})
    gw = {p["user"]: p for p in d["permissions"]}["eeszt-gateway"]
    assert (gw["configure"], gw["write"], gw["read"]) == (".*", ".*", ".*")


def run_with_fake_rabbitmqctl(tmp_path: Path, script: str, *args: str) -> tuple[int, list[list[str]], list[dict]]:
    """Run a deploy/rabbitmq script with a rabbitmqctl that records its calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log, defs = tmp_path / "calls.jsonl", tmp_path / "defs"
    defs.mkdir(exist_ok=True)
    fake = bindir / "rabbitmqctl"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import json, shutil, sys, uuid\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if 'import_definitions' in sys.argv:\n"
        f"    shutil.copy(sys.argv[-1], {str(defs)!r} + '/' + uuid.uuid4().hex + '.json')\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(DEPLOY / "rabbitmq" / script), *args], env=env,
                          capture_output=True, text=True, timeout=30)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc.returncode, calls, [json.loads(p.read_text()) for p in defs.glob("*.json")]


def _permissions_from_calls(calls: list[list[str]], user: str):
    perm, topics = None, {}
    for c in calls:
        c = [w for w in c if w != "-q"]
        if c[0] == "set_permissions":
            assert c[1:3] == ["-p", "/"] and c[3] == user
            perm = dict(zip(("configure", "write", "read"), c[4:7]))
        if c[0] == "set_topic_permissions":
            assert c[3] == user
            topics[c[4]] = dict(zip(("write", "read"), c[5:7]))
    return perm, topics


def test_add_his_user_grants_exactly_the_tenant_rights(tmp_path):
    rc, calls, defs = run_with_fake_rabbitmqctl(tmp_path, "add-his-user", "medsol", "s3cret")
    assert rc == 0
    assert ["-q", "add_user", "his-medsol", "s3cret"] in calls
    perm, topics = _permissions_from_calls(calls, "his-medsol")
    assert_his_permissions(perm, topics, "medsol")
    (d,) = defs
    (q,) = d["queues"]
    (b,) = d["bindings"]
    assert (q["name"], q["durable"], q["vhost"]) == ("his.medsol.replies", True, "/")
    assert (b["source"], b["destination"], b["routing_key"]) == (REPLIES_EXCHANGE, q["name"], "his.medsol")
    assert d["exchanges"] == definitions()["exchanges"]
    # the lines deploy/README.md shows are the ones the script runs
    readme = (DEPLOY / "README.md").read_text()
    shown = [shlex.split(ln.strip()) for ln in readme.splitlines()
             if ln.strip().startswith("rabbitmqctl set_") and "his-medsol" in ln]
    assert len(shown) == 3
    ran = [[w for w in c if w != "-q"] for c in calls if c[1].startswith("set_")]
    assert [s[1:] for s in shown] == ran


@pytest.mark.parametrize("bad", ["Med", "a.b", "-x", "a b", ""])
def test_add_his_user_refuses_bad_names(tmp_path, bad):
    rc, calls, _ = run_with_fake_rabbitmqctl(tmp_path, "add-his-user", bad, "pw")
    assert rc != 0 and not calls


def test_add_bridge_user_limits_a_bridge_to_its_own_queue(tmp_path):
    rc, calls, _ = run_with_fake_rabbitmqctl(tmp_path, "add-bridge-user", "WS-01", "pw")
    assert rc == 0
    perm, topics = _permissions_from_calls(calls, "bridge-WS-01")
    assert _may(perm["read"], "eeszt.card.WS-01") and not _may(perm["read"], "eeszt.card.WS-02")
    assert not _may(perm["read"], "eeszt.card.WS-010")
    assert _may(perm["write"], "eeszt.login") and not _may(perm["write"], REQUESTS_EXCHANGE)
    assert _may(topics["eeszt.login"]["write"], "answer")


# --- systemd ---------------------------------------------------------------------------------
UNITS = {"eeszt-gw-worker@.service": ("interactive", "batch"),
         "eeszt-gw-card-bridge@.service": ("WS-01", "ws_2.a")}


def unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read_string((SYSTEMD / name).read_text())
    return cp


def unit_values(name: str, section: str, key: str) -> list[str]:
    """All values of a key that may repeat (configparser keeps only the last)."""
    out, current = [], None
    for line in (SYSTEMD / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(f"{key}="):
            out.append(line.split("=", 1)[1])
    return out


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_units_parse_and_are_hardened(name):
    cp = unit(name)
    assert {"Unit", "Service", "Install"} <= set(cp.sections())
    svc = cp["Service"]
    assert "/etc/eeszt-gw/%i.env" in unit_values(name, "Service", "EnvironmentFile")
    assert svc["Restart"] == "on-failure"
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert svc["PrivateTmp"] == "yes"
    assert svc["User"] not in ("root", "0")
    assert cp["Install"]["WantedBy"] == "multi-user.target"
    for instance in UNITS[name]:
        argv = shlex.split(svc["ExecStart"].replace("%i", instance))
        assert argv[0].startswith("/") and os.path.basename(argv[0]) == "eeszt-gw"
        ns = parse(eeszt_gw_args(argv))
        s = settings_for(ns)
        # heartbeats go where the unit may write
        assert str(s.heartbeat_dir) in svc["ReadWritePaths"].replace("%i", instance).split()
        run_dir = "/run/" + svc["RuntimeDirectory"].replace("%i", instance)
        assert str(s.heartbeat_dir) == run_dir
        if ns.cmd == "worker":
            assert ns.queues == instance and s.queue_classes() == [instance]
            assert int(svc["TimeoutStopSec"]) > 60 and svc["KillMode"] == "mixed"
        else:
            assert ns.cmd == "card-bridge" and s.workstation == instance


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.match(r"^[A-Z_][A-Z0-9_]*$", key), f"{path.name}: {line!r}"
            out[key] = value
    return out


def test_systemd_example_env_files_are_real_settings(monkeypatch):
    examples = SYSTEMD / "examples"
    common = env_file(examples / "common.env")
    ranges = []
    for instance in UNITS["eeszt-gw-worker@.service"]:
        env = {**common, **env_file(examples / f"{instance}.env")}
        assert set(env) <= known_env_names(), set(env) - known_env_names()
        assert set(env) <= env_names("worker"), set(env) - env_names("worker")
        argv = shlex.split(unit("eeszt-gw-worker@.service")["Service"]["ExecStart"].replace("%i", instance))
        s = settings_for(parse(eeszt_gw_args(argv)), env, monkeypatch)
        assert s.broker_url.startswith("amqps://") and s.queue_classes() == [instance]
        ranges.append(set(range(s.metrics_port, s.metrics_port + s.processes)))
    assert not set.intersection(*ranges), "two instances on one host would share a metrics port"
    bridge = env_file(examples / "WS-01.env")
    assert set(bridge) <= known_env_names()
    assert set(bridge) <= env_names("card-bridge"), set(bridge) - env_names("card-bridge")
    argv = shlex.split(unit("eeszt-gw-card-bridge@.service")["Service"]["ExecStart"].replace("%i", "WS-01"))
    s = settings_for(parse(eeszt_gw_args(argv)), bridge, monkeypatch)
    assert s.broker_url.startswith("amqps://bridge-WS-01:")
    assert str(s.pinned_challenge_key) == bridge["EESZT_PINNED_CHALLENGE_KEY"]
    assert (s.eid_url, str(s.eid_ca)) == (bridge["EESZT_EID_URL"], bridge["EESZT_EID_CA"])


def test_the_example_config_file_serves_the_worker_and_the_card_bridge(monkeypatch):
    """deploy/eeszt-gw.toml through the real parser and eeszt_gw.config.load: top-level keys
    for every command that has them, a [command] table winning over them."""
    import tomllib

    path = DEPLOY / "eeszt-gw.toml"
    data = tomllib.loads(path.read_text())
    assert {"broker_url", "queue_type", "pki_dir", "worker", "card-bridge"} <= set(data)
    for name in ("EESZT_CONFIG", *known_env_names()):
        monkeypatch.delenv(name, raising=False)
    worker = settings_for(parse(["worker", "--config", str(path)]))
    assert worker.broker_url == data["broker_url"] and worker.queue_type == data["queue_type"]
    assert str(worker.pki_dir) == data["pki_dir"]
    for key, value in data["worker"].items():
        assert getattr(worker, key) == value, key
    # the environment names the file too (EESZT_CONFIG), and a flag still wins over it
    monkeypatch.setenv("EESZT_CONFIG", str(path))
    bridge = settings_for(parse(["card-bridge", "--check", "--metrics-port", "0"]))
    assert bridge.broker_url == data["card-bridge"]["broker_url"] != data["broker_url"]
    assert bridge.metrics_port == 0
    for key, value in data["card-bridge"].items():
        if key != "metrics_port":
            assert str(getattr(bridge, key)) == str(value), key
    # the worker's and the bridge's metrics ports do not clash on one host
    assert bridge.metrics_port != worker.metrics_port
    assert data["card-bridge"]["metrics_port"] not in range(
        worker.metrics_port, worker.metrics_port + worker.processes)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_verify_finds_nothing_wrong(name, tmp_path):
    inst = tmp_path / name.replace("@.", f"@{UNITS[name][0]}.")
    inst.write_text((SYSTEMD / name).read_text())
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(inst)],
                          capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                if name.split("@")[0] in ln and "is not executable" not in ln]
    assert not problems, "\n".join(problems)


# --- Docker ----------------------------------------------------------------------------------
def test_dockerfile_builds_the_project_with_the_card_extra():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert stages and all(s.startswith("python:3.11-slim") for s in stages)
    final = text.rsplit("\nFROM ", 1)[1]
    build = text.split("\nFROM ")[1] if len(stages) > 1 else text
    for pkg in ("gcc", "swig", "libpcsclite-dev"):
        assert re.search(rf"apt-get install[^\n]*\b{re.escape(pkg)}\b", build), pkg
    assert re.search(r"apt-get install[^\n]*\blibpcsclite1\b", final)
    assert '".[card]"' in text
    user = re.findall(r"^USER\s+(\S+)", final, re.M)[-1]
    assert user.split(":")[0] not in ("root", "0")
    assert entrypoint()[-1] == "eeszt-gw"
    sources = [w for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M)
               for w in line.split()[:-1]]
    for src in sources:
        assert (ROOT / src).exists(), src
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    packages.discard("benchmarks")  # not part of the product: the image leaves it out
    assert "-c constraints.txt" in text and "constraints.txt" in sources
    assert packages <= set(sources), f"packages the image lacks: {packages - set(sources)}"
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[0 if not ignore[0].startswith("#") else 1] == "**"
    assert {f"!{s}" for s in sources} <= set(ignore)
    # the workers' heartbeat folder and the PKI mount point exist and belong to the user
    assert "EESZT_HEARTBEAT_DIR=/run/eeszt-gw" in final and "chown eeszt:eeszt /pki" in final


# --- Grafana ---------------------------------------------------------------------------------
def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def test_grafana_dashboard_uses_only_the_gateway_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 40
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
    used = set()
    for title, expr in dashboard_exprs(dash):
        names = set(re.findall(r"\b(eeszt_[a-z_]+)\b", expr))
        assert names, f"{title}: no gateway metric in {expr}"
        assert names <= set(METRICS), f"{title}: unknown metric {names - set(METRICS)}"
        used |= names
        labels = set().union(*(METRICS[n] for n in names))
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            grouped = {x.strip() for x in group.split(",") if x.strip()}
            assert grouped <= labels, f"{title}: by {grouped - labels}"
        for matchers in re.findall(r"\{([^}]*)\}", expr):
            for label, _op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                assert label in labels, f"{title}: matcher on {label}"
                if label == "outcome":
                    assert set(value.split("|")) <= REQUEST_OUTCOMES
        assert expr.count("(") == expr.count(")"), title
    assert used == set(METRICS), f"metrics without a panel: {set(METRICS) - used}"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "service"} <= variables
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"


def test_grafana_certificate_panel_turns_red_under_30_days():
    dash = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dash["panels"] for t in p.get("targets", [])
                if "eeszt_certificate_days_left" in t["expr"]]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[0]["color"] == "red" and {"color": "green", "value": 30} in steps
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("service and outcome", "p50", "p95", "sts", "hit ratio", "parked",
                 "dead-lettered", "circuit", "certificate", "bridge logins"):
        assert word in titles, word


# --- README -----------------------------------------------------------------------------------
def test_readme_amqps_settings_with_a_private_ca_work(pki):
    """The TLS settings deploy/README.md shows, with the CA path pointed at a real CA file."""
    import ssl

    from eeszt_gw.amqp import BrokerTLS, broker_parameters

    readme = (DEPLOY / "README.md").read_text()
    shown = dict(re.findall(r"^(EESZT_BROKER_(?:URL|CA|CERT|KEY))=(\S+)$", readme, re.M))
    assert set(shown) == {"EESZT_BROKER_URL", "EESZT_BROKER_CA", "EESZT_BROKER_CERT",
                          "EESZT_BROKER_KEY"}
    assert set(shown) <= known_env_names()
    assert "ssl_options=" not in readme  # refused by eeszt_gw.amqp
    params = broker_parameters(shown["EESZT_BROKER_URL"], BrokerTLS(ca_file=pki.server_ca_cert))
    assert params.port == 5671 and params.virtual_host == "/"
    ctx = params.ssl_options.context
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert len(ctx.get_ca_certs()) == 1
    assert params.ssl_options.server_hostname == "rabbitmq.example.org"


def readme_commands(path: Path) -> list[list[str]]:
    """The eeszt-gw command lines in a README's sh code blocks (continuations joined)."""
    out, in_sh = [], False
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_sh = stripped in ("```sh", "```bash")
            continue
        if in_sh and "eeszt-gw " in stripped and not stripped.startswith("#"):
            words = shlex.split(stripped.split(" #", 1)[0])
            while words and re.match(r"^[A-Z_]+=", words[0]):
                words = words[1:]  # VAR=value before the command
            if not words or words[0] not in ("eeszt-gw", "docker", "kubectl", "sudo") \
                    and not words[0].endswith("/bin/eeszt-gw"):
                continue  # another program (useradd, install, ...) that names the user
            for i, w in enumerate(words):
                if (w == "eeszt-gw" or w.endswith("/bin/eeszt-gw")) and words[i - 1] != "-u":
                    args = words[i + 1:]
                    ends = [j for j, a in enumerate(args) if a in ("&&", "||", ";", "|", "&")]
                    out.append(args[:ends[0]] if ends else args)
                    break
    return out


@pytest.mark.parametrize("readme", ["README.md", "systemd/README.md"])
def test_readme_command_lines_are_valid(readme):
    commands = readme_commands(DEPLOY / readme)
    assert commands
    for args in commands:
        parse(args)


def test_readmes_exist_and_name_the_files_they_describe():
    readme = (DEPLOY / "README.md").read_text()
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.parent == DEPLOY / "k8s":
            continue  # described together as k8s/
        if path.is_file() and path.suffix in {".yaml", ".json", ".service", ""} and path.name != "README.md":
            rel = path.relative_to(DEPLOY).as_posix()
            assert rel in readme or path.name in readme, f"deploy/README.md does not mention {rel}"
    assert "kubectl create secret generic" in readme and "--from-file" in readme
    windows = (DEPLOY / "windows" / "README.md").read_text()
    for word in ("session 0", "WinSCard", "NSSM", "WinSW", "pywin32", "eSzemélyi", "logon task"):
        assert word in windows, word
    assert (SYSTEMD / "README.md").is_file()
