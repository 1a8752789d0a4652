"""infra/k8s agrees with the settings classes, the topic and group names, and with itself.

Nothing here needs a cluster: the manifests kustomization.yaml lists are read as YAML, and the
environment each container would get (ConfigMap, Secret template, ``env``) is fed through the
real settings classes, so a misspelt or stale variable fails here rather than being silently
ignored in a pod (the settings classes use ``extra="ignore"``).
"""

from __future__ import annotations

import json
import math
import re
import secrets
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic_settings import BaseSettings

from services.cli import app as cli_app
from services.common.settings import (
    SHARED_SETTINGS,
    KafkaSettings,
    TopicSettings,
)
from services.common.topics import GroupIds, Topics
from services.comparer.settings import ComparerSettings
from services.generator.settings import GeneratorSettings
from services.ingest.settings import IngestSettings
from services.providers.catalog import _ADAPTERS, ProvidersFile
from services.router.settings import RouterSettings
from services.storage.settings import StorageSettings
from services.webhooks.settings import WebhooksSettings
from tests.helpers import allowed_env_names, load_settings, unknown_env_keys

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
PROVIDERS_CONFIGMAP = K8S / "providers-configmap.yaml"
README = K8S / "README.md"

NAMESPACE = "forgeline"
PREFIX = "forgeline"
PLACEHOLDER = "change-me"
GENERATOR_PATHS = ("primary", "fallback")

#: What KEDA scales on: each ScaledObject's consumer group and topic, as the code derives them.
KEDA_LAG = {
    "generator-primary": (GroupIds(PREFIX).generator("primary"), Topics(PREFIX).name("generation.primary")),
    "generator-fallback": (GroupIds(PREFIX).generator("fallback"), Topics(PREFIX).name("generation.fallback")),
    "comparer": (GroupIds(PREFIX).comparer, Topics(PREFIX).name("comparison.requested")),
}
LAG_THRESHOLDS = {"generator-primary": "10", "generator-fallback": "5", "comparer": "8"}

#: The settings class of each service's own settings (beyond the shared connection settings).
SERVICE_SETTINGS: dict[str, type[BaseSettings]] = {
    "ingest": IngestSettings,
    "router": RouterSettings,
    "generator": GeneratorSettings,
    "storage": StorageSettings,
    "comparer": ComparerSettings,
    "webhooks": WebhooksSettings,
}
DEPLOYMENTS = ("ingest", "router", "generator-primary", "generator-fallback", "storage", "comparer", "webhooks")
WORKERS = ("router", "generator-primary", "generator-fallback", "storage", "comparer", "webhooks")
#: Workers that drain in-flight records on SIGTERM for up to their ``shutdown_timeout_s``.
DRAINING_WORKERS = ("generator-primary", "generator-fallback", "comparer")
#: Who may read each Secret besides forgeline-secrets (Deployment names; main containers only),
#: and whether the pod starts without it.
SECRET_READERS: dict[str, tuple[set[str], bool]] = {
    "forgeline-ingest-secrets": ({"ingest"}, False),
    "forgeline-provider-secrets": ({"ingest", "generator-primary", "generator-fallback"}, True),
    "forgeline-comparer-secrets": ({"comparer"}, True),
}
#: The Deployments that read the providers file, and the setting that names it.
PROVIDERS_READERS: dict[str, type[BaseSettings]] = {
    "ingest": IngestSettings,
    "generator-primary": GeneratorSettings,
    "generator-fallback": GeneratorSettings,
}
#: The initContainer of every Deployment: holds the pod until the topics Job has run.
WAIT_FOR_TOPICS = ["forgeline", "topics", "wait", "--timeout", "600"]


# ---------------------------------------------------------------------------------- helpers


def service_of(deployment: str) -> str:
    """``generator-primary`` → ``generator``: the service a Deployment runs."""
    return deployment.split("-")[0]


def settings_classes(service: str | None) -> tuple[type[BaseSettings], ...]:
    """The settings classes a process reads: the shared ones, plus its service's (None: a one-shot)."""
    return SHARED_SETTINGS + ((SERVICE_SETTINGS[service],) if service else ())


_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]+")  # base64, base64url and hex alphabets


def looks_random(value: str) -> bool:
    """A run of 20+ key-like characters mixing letter cases or letters and digits: a real key.

    Placeholders (``change-me``, host names, words) are one letter case; URLs split at ``:@./``.
    """
    for token in _TOKEN.findall(value):
        classes = sum(bool(re.search(pattern, token)) for pattern in ("[a-z]", "[A-Z]", "[0-9]"))
        if len(token) >= 20 and classes >= 2:
            return True
    return False


def commented_example(text: str) -> str:
    """The example a file carries in comments: its ``#   `` lines (hash, three spaces), uncommented."""
    return "\n".join(line.removeprefix("#   ") for line in text.splitlines() if line.startswith("#   "))


def keys_env_names(providers: ProvidersFile) -> set[str]:
    return {entry.keys_env for entry in (*providers.primary, *providers.fallback) if entry.keys_env}


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def named(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def all_containers(workload: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def main_container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(deployment)["containers"]
    return container


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    assert "data" not in secret, "the template uses stringData, so reviewers see the placeholders"
    return dict(secret.get("stringData") or {})


def container_env(
    container: Mapping[str, Any], configmaps: Mapping[str, Mapping[str, str]], secrets_: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """What the container's process sees: ``envFrom`` sources in order, then ``env`` on top."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        else:
            env.update(secrets_[source["secretRef"]["name"]])
    for item in container.get("env", []):
        if "valueFrom" in item:  # the downward API: the pod's own name, as settings would read it
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, item
            env[item["name"]] = "forgeline-pod-0"
            continue
        assert "value" in item, f"{item['name']}: only literal values here; shared values go in the ConfigMap"
        env[item["name"]] = str(item["value"])
    return env


def port_number(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def quantity(value: str | int) -> float:
    """Kubernetes CPU / memory quantities as numbers (cores, bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    text = str(value)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


def parse_cli(command: Sequence[str]) -> Any:
    """A container's ``forgeline ...`` command parsed by the real CLI, without running it: the
    (click) context of the subcommand it reaches, with ``command_path`` and ``params``.
    Unknown subcommands, options or bad values raise."""
    program, *args = command
    assert program == "forgeline"
    cli = typer.main.get_command(cli_app)
    ctx = cli.context_class(cli, info_name=program)
    while hasattr(cli, "get_command"):  # a group: descend into the named subcommand
        name, *args = args
        sub = cli.get_command(ctx, name)
        assert sub is not None, f"`{ctx.command_path}` has no `{name}`"
        cli, ctx = sub, sub.context_class(sub, info_name=name, parent=ctx)
    return cli.make_context(ctx.info_name, list(args), parent=ctx.parent)


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load(KUSTOMIZATION.read_text())


@pytest.fixture(scope="module")
def docs(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for resource in kustomization["resources"] for doc in load_docs(K8S / resource)]


@pytest.fixture(scope="module")
def deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return named(docs, "Deployment")


@pytest.fixture(scope="module")
def configmaps(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {name: {k: str(v) for k, v in cm["data"].items()} for name, cm in named(docs, "ConfigMap").items()}


@pytest.fixture(scope="module")
def config(configmaps: dict[str, dict[str, str]]) -> dict[str, str]:
    return configmaps["forgeline-config"]


@pytest.fixture(scope="module")
def example_secrets() -> dict[str, dict[str, str]]:
    return {name: secret_data(s) for name, s in named(load_docs(SECRET_EXAMPLE), "Secret").items()}


@pytest.fixture(scope="module")
def scaled_objects(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return named(docs, "ScaledObject")


@pytest.fixture(scope="module")
def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Everything that runs pods: the Deployments and the topics Job."""
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in docs if doc["kind"] in {"Deployment", "Job"}}


@pytest.fixture(scope="module")
def shipped_providers(configmaps: dict[str, dict[str, str]]) -> ProvidersFile:
    return ProvidersFile.model_validate(yaml.safe_load(configmaps["forgeline-providers"]["providers.yaml"]))


@pytest.fixture(scope="module")
def example_providers() -> ProvidersFile:
    """The real-provider example in providers-configmap.yaml's comments."""
    example = commented_example(PROVIDERS_CONFIGMAP.read_text())
    assert example, f"{PROVIDERS_CONFIGMAP.name} lost its commented example"
    return ProvidersFile.model_validate(yaml.safe_load(example))


@pytest.fixture(scope="module")
def provider_key_names(shipped_providers: ProvidersFile, example_providers: ProvidersFile) -> set[str]:
    """The variables a providers file may name for keys: not settings, but read by the generators."""
    return keys_env_names(shipped_providers) | keys_env_names(example_providers)


def env_of(
    deployment: str,
    deployments: Mapping[str, Any],
    configmaps: Mapping[str, Mapping[str, str]],
    example_secrets: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    return container_env(main_container(deployments[deployment]), configmaps, example_secrets)


def forgeline_containers(workload_key: str, workload: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Each container with the service whose settings it reads (None: shared settings only)."""
    kind, name = workload_key.split("/")
    for container in all_containers(workload):
        is_service = kind == "Deployment" and container in pod_spec(workload)["containers"]
        yield container, service_of(name) if is_service else None


# ---------------------------------------------------------------------------------- the helpers catch mistakes


def test_looks_random_catches_real_keys_not_placeholders() -> None:
    # Generated here, never stored: the repository holds no key-like strings.
    assert looks_random(secrets.token_hex(16))
    assert looks_random(secrets.token_urlsafe(32) + "Aa1")
    assert looks_random(f"redis://:{secrets.token_hex(16)}@redis:6379/0")
    assert looks_random("change-me-" + secrets.token_hex(5).upper() + "abcdefghij")  # 20 characters, hidden
    assert not looks_random(PLACEHOLDER)
    assert not looks_random("redis://:change-me@redis.forgeline.svc:6379/0")
    assert not looks_random("forgeline_generation_primary_topic")  # long, but one letter case


def test_container_env_layers_env_over_env_from() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "c"}}, {"secretRef": {"name": "s"}}],
        "env": [{"name": "B", "value": 2}],
    }
    assert container_env(container, {"c": {"A": "1", "B": "1"}}, {"s": {"C": "3"}}) == {"A": "1", "B": "2", "C": "3"}


# ---------------------------------------------------------------------------------- the kustomization


def test_kustomization_accounts_for_every_file_in_the_folder(kustomization: dict[str, Any]) -> None:
    """Every file is applied (a resource or a generator's input) or one of the few that are not:
    no manifest is forgotten, and nothing stale (an old script, a leftover file) lingers."""
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    generated = [
        file.split("=")[-1]
        for kind in ("configMapGenerator", "secretGenerator")
        for generator in kustomization.get(kind, [])
        for file in generator.get("files", [])
    ]
    for listed in (*resources, *generated):
        assert (K8S / listed).is_file(), f"{listed} is listed but missing"
    not_applied = {KUSTOMIZATION.name, SECRET_EXAMPLE.name, README.name}
    on_disk = {path.name for path in K8S.iterdir() if path.is_file()}
    assert on_disk == {*resources, *generated} | not_applied
    assert SECRET_EXAMPLE.name not in resources


def test_one_namespace(kustomization: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    assert kustomization["namespace"] == NAMESPACE
    assert set(named(docs, "Namespace")) == {NAMESPACE}
    for doc in docs:
        assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE, doc["metadata"]["name"]
    for secret in load_docs(SECRET_EXAMPLE):
        assert secret["metadata"]["namespace"] == NAMESPACE


def test_no_secret_is_applied_from_the_repository(docs: list[dict[str, Any]]) -> None:
    assert not named(docs, "Secret")


def test_the_image_is_the_project_version(kustomization: dict[str, Any], workloads: dict[str, Any]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    (image,) = kustomization["images"]
    assert (image["name"], image["newTag"]) == ("forgeline", version)
    for key, workload in workloads.items():
        for container in all_containers(workload):
            assert container["image"] == f"forgeline:{version}", f"{key}/{container['name']}"


# ---------------------------------------------------------------------------------- the Deployments


def test_deployments_are_exactly_the_expected_set(deployments: dict[str, Any]) -> None:
    assert set(deployments) == set(DEPLOYMENTS)


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_command_runs_the_service_of_the_same_name(deployments: dict[str, Any], name: str) -> None:
    assert main_container(deployments[name])["command"][:3] == ["forgeline", "run", service_of(name)]


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_selector_matches_the_pod_labels(deployments: dict[str, Any], name: str) -> None:
    deployment = deployments[name]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": name}
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("path", GENERATOR_PATHS)
def test_generator_path_matches_its_name(
    deployments: dict[str, Any], configmaps: dict[str, Any], example_secrets: dict[str, Any], path: str
) -> None:
    name = f"generator-{path}"
    assert env_of(name, deployments, configmaps, example_secrets)["FORGELINE_GENERATOR_PATH"] == path
    assert main_container(deployments[name])["command"][-2:] == ["--path", path]


# ---------------------------------------------------------------------------------- env: names and values


def test_shared_sources_hold_only_shared_settings(
    config: dict[str, str], example_secrets: dict[str, dict[str, str]]
) -> None:
    """The ConfigMap and forgeline-secrets reach every pod, so they carry shared settings only."""
    shared = allowed_env_names(settings_classes(None))
    assert not unknown_env_keys(config, shared)
    assert not unknown_env_keys(example_secrets["forgeline-secrets"], shared)
    ingest = allowed_env_names(settings_classes("ingest"))
    assert not unknown_env_keys(example_secrets["forgeline-ingest-secrets"], ingest)
    comparer = allowed_env_names(settings_classes("comparer"))
    assert not unknown_env_keys(example_secrets["forgeline-comparer-secrets"], comparer)


def test_provider_secrets_hold_the_keys_the_providers_file_names(
    example_secrets: dict[str, dict[str, str]], provider_key_names: set[str]
) -> None:
    """Every key variable is one a providers entry reads (keys_env), and none is a setting."""
    names = set(example_secrets["forgeline-provider-secrets"])
    assert names == provider_key_names
    every_setting = allowed_env_names(SHARED_SETTINGS + tuple(SERVICE_SETTINGS.values()))
    assert not names & every_setting


def test_env_sources_exist(workloads: dict[str, Any], configmaps: dict[str, Any], example_secrets: dict[str, Any]) -> None:
    for key, workload in workloads.items():
        for container in all_containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, key
                else:
                    assert source["secretRef"]["name"] in example_secrets, key


@pytest.mark.parametrize("secret", sorted(SECRET_READERS))
def test_each_secret_reaches_only_its_readers(workloads: dict[str, Any], secret: str) -> None:
    """The API keys only in ingest, the VLM keys only in the comparer, the provider keys only where
    providers are called or shown; never in an initContainer."""
    readers, optional = SECRET_READERS[secret]
    for key, workload in workloads.items():
        kind, name = key.split("/")
        for container in all_containers(workload):
            refs = {s["secretRef"]["name"]: s["secretRef"] for s in container.get("envFrom", []) if "secretRef" in s}
            expected = kind == "Deployment" and name in readers and container in pod_spec(workload)["containers"]
            assert (secret in refs) == expected, f"{key}/{container['name']}"
            if expected:
                assert refs[secret].get("optional", False) is optional, f"{key}/{container['name']}"


@pytest.mark.parametrize("key", ["Job/forgeline-topics", *(f"Deployment/{name}" for name in DEPLOYMENTS)])
def test_every_env_key_is_a_real_setting(
    workloads: dict[str, Any], configmaps: dict[str, Any], example_secrets: dict[str, Any],
    provider_key_names: set[str], key: str,
) -> None:
    for container, service in forgeline_containers(key, workloads[key]):
        env = container_env(container, configmaps, example_secrets)
        allowed = allowed_env_names(settings_classes(service))
        if service in {"generator", "ingest"}:
            allowed |= provider_key_names
        unknown = unknown_env_keys(env, allowed)
        assert not unknown, f"{key}/{container['name']}: no settings class reads {sorted(unknown)}"


@pytest.mark.parametrize("key", ["Job/forgeline-topics", *(f"Deployment/{name}" for name in DEPLOYMENTS)])
def test_every_env_value_is_accepted_by_the_settings(
    workloads: dict[str, Any],
    configmaps: dict[str, Any],
    example_secrets: dict[str, Any],
    config: dict[str, str],
    key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for container, service in forgeline_containers(key, workloads[key]):
        env = container_env(container, configmaps, example_secrets)
        loaded = load_settings(env, settings_classes(service), monkeypatch)
        # Read, not defaulted.
        assert loaded[KafkaSettings].bootstrap == config["FORGELINE_KAFKA_BOOTSTRAP"]
        assert loaded[TopicSettings].prefix == PREFIX


def test_topics_are_replicated_for_a_real_cluster(config: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    topics = load_settings(config, (TopicSettings,), monkeypatch)[TopicSettings]
    assert topics.replication_factor == 3
    # acks=all producers keep working with one broker down.
    assert 1 < topics.min_insync_replicas < topics.replication_factor


# ---------------------------------------------------------------------------------- probes, metrics, shutdown


def test_ingest_probes_and_service(
    docs: list[dict[str, Any]],
    deployments: dict[str, Any],
    configmaps: dict[str, Any],
    example_secrets: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ingest = deployments["ingest"]
    container = main_container(ingest)
    env = env_of("ingest", deployments, configmaps, example_secrets)
    settings = load_settings(env, (IngestSettings,), monkeypatch)[IngestSettings]
    assert settings.host == "0.0.0.0"
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert ready["httpGet"]["path"] == "/readyz"
    assert live["httpGet"]["path"] == "/healthz"
    for probe in (ready, live):
        assert port_number(container, probe["httpGet"]["port"]) == settings.port
    # /readyz may wait probe_timeout_s for a dependency before answering.
    assert ready["timeoutSeconds"] > settings.probe_timeout_s

    service = named(docs, "Service")["ingest"]
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    assert port_number(container, port["targetPort"]) == settings.port
    assert service["spec"]["selector"].items() <= ingest["spec"]["template"]["metadata"]["labels"].items()


def test_ingest_shutdown_fits_in_the_grace_period(
    deployments: dict[str, Any], configmaps: dict[str, Any], example_secrets: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ingest = deployments["ingest"]
    env = env_of("ingest", deployments, configmaps, example_secrets)
    settings = load_settings(env, (IngestSettings,), monkeypatch)[IngestSettings]
    pre_stop = main_container(ingest)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod_spec(ingest)["terminationGracePeriodSeconds"] > int(pre_stop[1]) + settings.shutdown_grace_s


@pytest.mark.parametrize("name", WORKERS)
def test_worker_metrics_port_is_scraped_and_probed(
    deployments: dict[str, Any], configmaps: dict[str, Any], example_secrets: dict[str, Any], name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = deployments[name]
    container = main_container(deployment)
    own = SERVICE_SETTINGS[service_of(name)]
    settings = load_settings(env_of(name, deployments, configmaps, example_secrets), (own,), monkeypatch)[own]
    port = settings.metrics_port  # type: ignore[attr-defined]
    assert port is not None, f"{name}: no metrics port, so nothing to scrape or probe"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    live = container["livenessProbe"]["httpGet"]
    assert live["path"] == "/metrics"
    assert port_number(container, live["port"]) == port


def test_ingest_is_scraped_on_its_api_port(
    deployments: dict[str, Any], configmaps: dict[str, Any], example_secrets: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = env_of("ingest", deployments, configmaps, example_secrets)
    settings = load_settings(env, (IngestSettings,), monkeypatch)[IngestSettings]
    annotations = deployments["ingest"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.port
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("name", DRAINING_WORKERS)
def test_workers_may_finish_in_flight_work_on_sigterm(
    deployments: dict[str, Any], configmaps: dict[str, Any], example_secrets: dict[str, Any], name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own = SERVICE_SETTINGS[service_of(name)]
    env = env_of(name, deployments, configmaps, example_secrets)
    settings = load_settings(env, (own,), monkeypatch)[own]
    grace = pod_spec(deployments[name])["terminationGracePeriodSeconds"]
    assert grace == 90
    # In-flight jobs may finish before the pod is killed.
    assert grace > settings.shutdown_timeout_s  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- pods: security, resources


def test_every_pod_runs_as_non_root(workloads: dict[str, Any]) -> None:
    assert {"Job/forgeline-topics", *(f"Deployment/{name}" for name in DEPLOYMENTS)} == set(workloads)
    for key, workload in workloads.items():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, key
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", key
        assert spec.get("automountServiceAccountToken") is False, key


def test_every_container_is_locked_down_with_a_writable_tmp(workloads: dict[str, Any]) -> None:
    for key, workload in workloads.items():
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        for container in all_containers(workload):
            where = f"{key}/{container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1, f"{where}: no /tmp"
            assert "emptyDir" in volumes[tmp[0]["name"]], where


def test_every_container_has_requests_and_limits(workloads: dict[str, Any]) -> None:
    for key, workload in workloads.items():
        for container in all_containers(workload):
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert quantity(request) <= quantity(limit), f"{key}/{container['name']} {resource}"


@pytest.mark.parametrize("name", ["ingest", "router"])
def test_replicas_prefer_different_nodes(deployments: dict[str, Any], name: str) -> None:
    deployment = deployments[name]
    (term,) = pod_spec(deployment)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert labels.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


# ---------------------------------------------------------------------------------- topics: Job and waiting


def test_topics_job_creates_the_topics(workloads: dict[str, Any]) -> None:
    job = workloads["Job/forgeline-topics"]
    (container,) = pod_spec(job)["containers"]
    assert container["command"] == ["forgeline", "topics", "create"]
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert pod_spec(job)["restartPolicy"] in {"Never", "OnFailure"}


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_every_deployment_waits_for_the_topics(deployments: dict[str, Any], name: str) -> None:
    spec = pod_spec(deployments[name])
    (init,) = spec["initContainers"]
    assert init["name"] == "wait-for-topics"
    assert init["command"] == WAIT_FOR_TOPICS
    assert "args" not in init
    # Every volume is mounted somewhere, and every mount has its volume: nothing left dangling.
    mounted = {m["name"] for container in all_containers(deployments[name]) for m in container.get("volumeMounts", [])}
    assert {v["name"] for v in spec["volumes"]} == mounted


def test_the_wait_command_is_one_the_cli_understands() -> None:
    ctx = parse_cli(WAIT_FOR_TOPICS)
    assert ctx.command_path == "forgeline topics wait"
    assert ctx.params["timeout"] == 600


# ---------------------------------------------------------------------------------- autoscaling


@pytest.mark.parametrize("name", sorted(KEDA_LAG))
def test_keda_watches_the_consumer_group_and_topic(
    scaled_objects: dict[str, Any], deployments: dict[str, Any], config: dict[str, str], name: str
) -> None:
    scaled = scaled_objects[name]["spec"]
    assert scaled["scaleTargetRef"]["name"] == name
    assert name in deployments
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert config["FORGELINE_TOPICS_PREFIX"] == PREFIX
    assert (meta["consumerGroup"], meta["topic"]) == KEDA_LAG[name]
    assert meta["bootstrapServers"] == config["FORGELINE_KAFKA_BOOTSTRAP"]
    assert meta["lagThreshold"] == LAG_THRESHOLDS[name]
    assert meta["offsetResetPolicy"] == "earliest"


@pytest.mark.parametrize("name", sorted(KEDA_LAG))
def test_keda_scales_within_the_partitions(scaled_objects: dict[str, Any], config: dict[str, str], name: str) -> None:
    scaled = scaled_objects[name]["spec"]
    partitions = int(config["FORGELINE_TOPICS_PARTITIONS"])
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= partitions
    if name in {"generator-primary", "comparer"}:
        assert scaled["maxReplicaCount"] == partitions == 6


def test_primary_scales_up_before_the_router_spills_to_fallback(
    scaled_objects: dict[str, Any], deployments: dict[str, Any], configmaps: dict[str, Any],
    example_secrets: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the depth where the router starts paying for fallback, KEDA already wants more primaries."""
    env = env_of("router", deployments, configmaps, example_secrets)
    router = load_settings(env, (RouterSettings,), monkeypatch)[RouterSettings]
    primary = scaled_objects["generator-primary"]["spec"]
    wanted_at_spill = math.ceil(router.depth_high / int(primary["triggers"][0]["metadata"]["lagThreshold"]))
    assert wanted_at_spill > primary["minReplicaCount"]


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(
    docs: list[dict[str, Any]], deployments: dict[str, Any]
) -> None:
    scaled = {s["spec"]["scaleTargetRef"]["name"] for s in named(docs, "ScaledObject").values()}
    hpa = {h["spec"]["scaleTargetRef"]["name"] for h in named(docs, "HorizontalPodAutoscaler").values()}
    assert scaled == set(KEDA_LAG)
    assert hpa == {"ingest"}
    assert not scaled & hpa
    for name, deployment in deployments.items():
        assert ("replicas" in deployment["spec"]) == (name not in scaled | hpa), name


def test_ingest_hpa_scales_on_cpu_from_two(docs: list[dict[str, Any]]) -> None:
    hpa = named(docs, "HorizontalPodAutoscaler")["ingest"]["spec"]
    assert hpa["minReplicas"] == 2
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"


@pytest.mark.parametrize("name", ["ingest", "router"])
def test_disruption_budget_leaves_room_to_drain(docs: list[dict[str, Any]], deployments: dict[str, Any], name: str) -> None:
    pdb = named(docs, "PodDisruptionBudget")[name]["spec"]
    assert pdb["minAvailable"] == 1
    labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = named(docs, "HorizontalPodAutoscaler").get(name)
    fewest = hpa["spec"]["minReplicas"] if hpa else deployments[name]["spec"]["replicas"]
    assert fewest == 2
    assert fewest > pdb["minAvailable"]


# ---------------------------------------------------------------------------------- the Secret template


def test_secret_example_holds_only_placeholders(example_secrets: dict[str, dict[str, str]]) -> None:
    assert set(example_secrets) == {"forgeline-secrets", *SECRET_READERS}
    for name, data in example_secrets.items():
        for key, value in data.items():
            assert not looks_random(value), f"{name}/{key} looks like a real key"
            assert PLACEHOLDER in value, f"{name}/{key}: mark placeholders with {PLACEHOLDER!r}"
    api_keys = json.loads(example_secrets["forgeline-ingest-secrets"]["FORGELINE_INGEST_API_KEYS"])
    assert api_keys
    for tenant, key in api_keys.items():
        assert key.startswith(PLACEHOLDER), tenant


def test_secret_example_covers_the_credentials(example_secrets: dict[str, dict[str, str]]) -> None:
    assert set(example_secrets["forgeline-secrets"]) == {
        "FORGELINE_REDIS_URL",
        "FORGELINE_S3_ACCESS_KEY_ID",
        "FORGELINE_S3_SECRET_ACCESS_KEY",
    }
    assert set(example_secrets["forgeline-ingest-secrets"]) == {"FORGELINE_INGEST_API_KEYS"}
    assert set(example_secrets["forgeline-comparer-secrets"]) == {"FORGELINE_COMPARER_VLM_KEYS"}


# ---------------------------------------------------------------------------------- the providers file


def test_shipped_providers_file_is_procedural_only(shipped_providers: ProvidersFile) -> None:
    """It must work with no Secret at all: forgeline-provider-secrets is optional."""
    for path in GENERATOR_PATHS:
        assert [entry.type for entry in shipped_providers.path(path)] == ["procedural"], path
    assert not keys_env_names(shipped_providers)


def test_commented_providers_example_is_valid(example_providers: ProvidersFile) -> None:
    """Uncommented, the example is a file the generators start with: options included."""
    for path in GENERATOR_PATHS:
        for entry in example_providers.path(path):
            if entry.type != "procedural":
                config_cls, _ = _ADAPTERS[entry.type]
                config_cls.model_validate(entry.options)
    types = {entry.type for path in GENERATOR_PATHS for entry in example_providers.path(path)}
    assert types - {"procedural"}, "the example should show real providers"


@pytest.mark.parametrize("name", sorted(PROVIDERS_READERS))
def test_providers_file_is_mounted_where_the_setting_points(
    deployments: dict[str, Any], configmaps: dict[str, Any], example_secrets: dict[str, Any], name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own = PROVIDERS_READERS[name]
    env = env_of(name, deployments, configmaps, example_secrets)
    setting = load_settings(env, (own,), monkeypatch)[own].providers_file  # type: ignore[attr-defined]
    assert setting is not None, f"{name}: no providers file, so the procedural provider runs"

    volumes = {v["name"]: v for v in pod_spec(deployments[name])["volumes"]}
    files = set()
    for mount in main_container(deployments[name]).get("volumeMounts", []):
        source = volumes[mount["name"]].get("configMap")
        if source and source["name"] == "forgeline-providers":
            assert mount.get("readOnly") is True, name
            assert "subPath" not in mount, f"{name}: a subPath mount never sees ConfigMap updates"
            for item in source["items"]:
                assert item["key"] in configmaps["forgeline-providers"], name
                files.add(Path(mount["mountPath"]) / item["path"])
    assert files == {setting}


def test_only_the_providers_readers_mount_the_providers_file(deployments: dict[str, Any]) -> None:
    for name, deployment in deployments.items():
        sources = {v.get("configMap", {}).get("name") for v in pod_spec(deployment)["volumes"]}
        assert ("forgeline-providers" in sources) == (name in PROVIDERS_READERS), name
