"""infra/docker-compose.yml agrees with the settings classes, the local stack and the Kafka pin.

Nothing here needs Docker: the compose file is read as YAML and its Forgeline environment is fed
through the real settings classes, so a misspelt or stale variable fails here rather than being
silently ignored by a container (the settings classes use ``extra="ignore"``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.common.settings import (
    MAX_MESSAGE_BYTES,
    SHARED_SETTINGS,
    S3Settings,
)
from services.comparer.settings import ComparerSettings
from services.generator.settings import GeneratorSettings
from services.ingest.settings import IngestSettings
from services.providers.catalog import ProvidersFile
from services.router.settings import RouterSettings
from services.storage.settings import StorageSettings
from services.webhooks.settings import WebhooksSettings
from tests.helpers import allowed_env_names, load_settings, unknown_env_keys

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "infra" / "docker-compose.yml"
PROVIDERS_FILE = REPO / "infra" / "providers.yaml"
POM_FILE = REPO / "infra" / "local" / "pom.xml"
POM_NS = "http://maven.apache.org/POM/4.0.0"

FORGELINE_IMAGE = "forgeline:local"

#: Each Forgeline service and the settings class of its own (beyond the shared connection settings).
SERVICE_SETTINGS: dict[str, type[BaseSettings] | None] = {
    "topics": None,
    "ingest": IngestSettings,
    "router": RouterSettings,
    "generator-primary": GeneratorSettings,
    "generator-fallback": GeneratorSettings,
    "storage": StorageSettings,
    "comparer": ComparerSettings,
    "webhooks": WebhooksSettings,
}
#: The services that read the providers file (and its keys), and the setting that names it.
PROVIDERS_READERS: dict[str, type[BaseSettings]] = {
    "ingest": IngestSettings,
    "generator-primary": GeneratorSettings,
    "generator-fallback": GeneratorSettings,
}
#: Secrets are never written in the compose file: each comes from the shell running compose.
PASS_THROUGH = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+):-\}$")
INFRA_SERVICES = {"kafka", "redis", "minio", "minio-init"}
EXPECTED_SERVICES = INFRA_SERVICES | set(SERVICE_SETTINGS)
LONG_RUNNING = sorted(set(SERVICE_SETTINGS) - {"topics"})


# ---------------------------------------------------------------------------------- helpers


def settings_classes(service: str) -> tuple[type[BaseSettings], ...]:
    """The settings classes a Forgeline service reads at start-up."""
    own = SERVICE_SETTINGS[service]
    return SHARED_SETTINGS + ((own,) if own is not None else ())


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(value: str) -> str:
    """``${VAR:-default}`` and ``${VAR}`` as compose resolves them with nothing set in the shell."""
    return _VARIABLE.sub(lambda match: match["default"] or "", value)


def raw_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as written: strings, from either compose syntax, not interpolated."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in raw)
        return {key: value for key, value in pairs}
    # Compose turns YAML scalars into strings; booleans become "true"/"false".
    return {key: (str(value).lower() if isinstance(value, bool) else str(value)) for key, value in raw.items()}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as the container sees it, with no variables set in the shell."""
    return {key: interpolate(value) for key, value in raw_environment(service).items()}


def commented_example(text: str) -> str:
    """The example a file carries in comments: its ``#   `` lines (hash, three spaces), uncommented."""
    return "\n".join(line.removeprefix("#   ") for line in text.splitlines() if line.startswith("#   "))


def keys_env_names(providers: ProvidersFile) -> set[str]:
    return {entry.keys_env for entry in (*providers.primary, *providers.fallback) if entry.keys_env}


def published(service: Mapping[str, Any], container_port: int) -> int:
    """The host port ``container_port`` is published on (short syntax, optionally with a host IP)."""
    for mapping in service.get("ports", []):
        *_, host_port, target = str(mapping).split(":")
        if int(target) == container_port:
            return int(host_port)
    raise AssertionError(f"container port {container_port} is not published: {service.get('ports')}")


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` (Kafka listener syntax) → {name: (host, port)}."""
    result = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        result[name] = (host, int(port))
    return result


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def shipped_providers() -> ProvidersFile:
    return ProvidersFile.model_validate(yaml.safe_load(PROVIDERS_FILE.read_text()))


@pytest.fixture(scope="module")
def example_providers() -> ProvidersFile:
    """The real-provider example in providers.yaml's comments."""
    example = commented_example(PROVIDERS_FILE.read_text())
    assert example, f"{PROVIDERS_FILE.name} lost its commented example"
    return ProvidersFile.model_validate(yaml.safe_load(example))


@pytest.fixture(scope="module")
def provider_key_names(shipped_providers: ProvidersFile, example_providers: ProvidersFile) -> set[str]:
    """The variables a providers file may name for keys: not settings, but read by the generators."""
    return keys_env_names(shipped_providers) | keys_env_names(example_providers)


def forgeline_services(services: Mapping[str, Mapping[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    return ((name, svc) for name, svc in services.items() if svc.get("image") == FORGELINE_IMAGE)


# ---------------------------------------------------------------------------------- the helpers catch mistakes


def test_environment_reads_both_compose_syntaxes() -> None:
    assert environment({"environment": ["A=1", "B=x=y"]}) == {"A": "1", "B": "x=y"}
    assert environment({"environment": {"A": 1, "B": False}}) == {"A": "1", "B": "false"}


def test_interpolate_resolves_unset_variables_like_compose() -> None:
    assert interpolate("${KEYS:-}") == ""
    assert interpolate("${PORT:-8080}") == "8080"
    assert interpolate("${HOST}:9092") == ":9092"
    assert interpolate("plain") == "plain"


def test_commented_example_uncomments_only_the_indented_block() -> None:
    text = "# prose\n#\n#   a:\n#     - 1\nb: 2\n"
    assert yaml.safe_load(commented_example(text)) == {"a": [1]}


# ---------------------------------------------------------------------------------- the compose file


def test_service_names_are_exactly_the_expected_set(services: dict[str, Any]) -> None:
    assert set(services) == EXPECTED_SERVICES


def test_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_forgeline_services_share_one_image_built_from_the_repo(services: dict[str, Any]) -> None:
    assert {name for name, _ in forgeline_services(services)} == set(SERVICE_SETTINGS)
    for name, svc in forgeline_services(services):
        build = svc["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == REPO, name
        assert (context / build["dockerfile"]).is_file(), name


@pytest.mark.parametrize("name", sorted(SERVICE_SETTINGS))
def test_every_env_key_is_a_real_setting(services: dict[str, Any], provider_key_names: set[str], name: str) -> None:
    allowed = allowed_env_names(settings_classes(name))
    if name in PROVIDERS_READERS:
        allowed |= provider_key_names
    unknown = unknown_env_keys(environment(services[name]), allowed)
    assert not unknown, f"{name}: no settings class reads {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(SERVICE_SETTINGS))
def test_every_env_value_is_accepted_by_the_settings(
    services: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services[name])
    loaded = load_settings(env, settings_classes(name), monkeypatch)
    # Spot-check that the values were read, not defaulted.
    kafka = next(s for cls, s in loaded.items() if cls.__name__ == "KafkaSettings")
    assert kafka.bootstrap == env["FORGELINE_KAFKA_BOOTSTRAP"]
    if SERVICE_SETTINGS[name] is GeneratorSettings:
        assert loaded[GeneratorSettings].path == name.removeprefix("generator-")


def test_connections_point_at_the_compose_services(services: dict[str, Any]) -> None:
    kafka_internal = listeners(environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"])["PLAINTEXT"]
    for name, svc in forgeline_services(services):
        env = environment(svc)
        for server in env["FORGELINE_KAFKA_BOOTSTRAP"].split(","):
            host, _, port = server.rpartition(":")
            assert (host, int(port)) == kafka_internal, name
        redis = urlsplit(env["FORGELINE_REDIS_URL"])
        assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379), name
        s3 = urlsplit(env["FORGELINE_S3_ENDPOINT_URL"])
        assert (s3.hostname, s3.port) == ("minio", 9000), name


def test_every_forgeline_service_waits_for_its_dependencies(services: dict[str, Any]) -> None:
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in LONG_RUNNING:
        depends = services[name]["depends_on"]
        assert depends["topics"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["minio"]["condition"] == "service_healthy", name


def test_dependency_conditions_can_be_met(services: dict[str, Any]) -> None:
    """``service_healthy`` needs a healthcheck; a one-shot that restarts never "completes"."""
    for name, svc in services.items():
        for target, spec in (svc.get("depends_on") or {}).items():
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{name} waits for {target} to exit"


def test_commands_run_the_service_of_the_same_name(services: dict[str, Any]) -> None:
    assert services["topics"]["command"] == ["forgeline", "topics", "create"]
    for name in LONG_RUNNING:
        component = name.split("-")[0]
        assert services[name]["command"][:3] == ["forgeline", "run", component], name


@pytest.mark.parametrize("name", ["generator-primary", "generator-fallback"])
def test_generator_path_matches_its_name(services: dict[str, Any], name: str) -> None:
    path = name.removeprefix("generator-")
    assert environment(services[name])["FORGELINE_GENERATOR_PATH"] == path
    assert services[name]["command"][-2:] == ["--path", path]


def test_ingest_is_published_and_health_checked_on_its_port(services: dict[str, Any]) -> None:
    ingest = services["ingest"]
    env = environment(ingest)
    port = int(env["FORGELINE_INGEST_PORT"])
    assert env["FORGELINE_INGEST_HOST"] == "0.0.0.0"
    assert published(ingest, port) == 8080
    probe = " ".join(ingest["healthcheck"]["test"])
    assert f":{port}/healthz" in probe


def test_kafka_accepts_what_forgeline_produces(services: dict[str, Any]) -> None:
    env = environment(services["kafka"])
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= MAX_MESSAGE_BYTES
    assert int(env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= MAX_MESSAGE_BYTES
    # Topics come from `forgeline topics create`; auto-creation would hide a misspelt topic.
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_s3_credentials_and_bucket_match_minio(services: dict[str, Any]) -> None:
    minio, init = environment(services["minio"]), environment(services["minio-init"])
    for name, svc in forgeline_services(services):
        env = environment(svc)
        assert env["FORGELINE_S3_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"] == init["ACCESS_KEY"], name
        assert env["FORGELINE_S3_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"] == init["SECRET_KEY"], name
        assert env["FORGELINE_S3_BUCKET"] == init["BUCKET"], name


def test_host_ports_match_the_local_dev_stack(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Same host ports as `forgeline dev up`, so host-side tools work against either stack."""
    from services.devstack.settings import DevStackSettings

    dev = load_settings({}, (DevStackSettings,), monkeypatch)[DevStackSettings]
    kafka = services["kafka"]
    external = listeners(environment(kafka)["KAFKA_ADVERTISED_LISTENERS"])["EXTERNAL"]
    assert external == ("localhost", dev.kafka_port)
    assert published(kafka, dev.kafka_port) == dev.kafka_port
    assert published(services["redis"], 6379) == dev.redis_port
    assert published(services["minio"], 9000) == dev.s3_port


def test_public_image_urls_open_from_the_host(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    storage_env = environment(services["storage"])
    s3 = load_settings(storage_env, (S3Settings,), monkeypatch)[S3Settings]
    url = urlsplit(s3.public_url("images/abc.png"))
    assert (url.hostname, url.port) == ("localhost", published(services["minio"], 9000))
    assert url.path == f"/{storage_env['FORGELINE_S3_BUCKET']}/images/abc.png"


def test_kafka_image_matches_the_pinned_kafka_version(services: dict[str, Any]) -> None:
    version = ET.parse(POM_FILE).getroot().findtext(f"{{{POM_NS}}}properties/{{{POM_NS}}}kafka.version")
    assert version, f"no <properties><kafka.version> in {POM_FILE.relative_to(REPO)}"
    image, _, tag = services["kafka"]["image"].partition(":")
    assert (image, tag) == ("apache/kafka", version.strip())


# ---------------------------------------------------------------------------------- secrets and providers


def test_secrets_are_passed_through_from_the_shell(services: dict[str, Any], provider_key_names: set[str]) -> None:
    """The VLM's and the providers' keys are ``${NAME:-}``: never in the file, and empty when unset."""
    for name, svc in forgeline_services(services):
        raw = raw_environment(svc)
        secret_names = {"FORGELINE_COMPARER_VLM_KEYS"} if name == "comparer" else set()
        if name in PROVIDERS_READERS:
            secret_names |= provider_key_names
        assert {key for key in raw if key.startswith("FORGELINE_KEYS_") or key.endswith("_VLM_KEYS")} == secret_names, name
        for key in secret_names:
            match = PASS_THROUGH.match(raw[key])
            assert match and match["name"] == key, f"{name}/{key}: {raw[key]!r}"


def test_comparer_without_vlm_keys_is_perceptual(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.keypool import keys_from_env

    settings = load_settings(environment(services["comparer"]), (ComparerSettings,), monkeypatch)[ComparerSettings]
    assert not keys_from_env(settings.vlm_keys, settings.vlm_name)


def test_shipped_providers_file_is_procedural_only(shipped_providers: ProvidersFile) -> None:
    """The stack must come up with no keys in the shell."""
    for path in ("primary", "fallback"):
        assert [entry.type for entry in shipped_providers.path(path)] == ["procedural"], path
    assert not keys_env_names(shipped_providers)


def test_commented_providers_example_names_real_providers(example_providers: ProvidersFile) -> None:
    types = {entry.type for entry in (*example_providers.primary, *example_providers.fallback)}
    assert types - {"procedural"}


@pytest.mark.parametrize("name", sorted(PROVIDERS_READERS))
def test_providers_file_is_mounted_where_the_setting_points(
    services: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = PROVIDERS_READERS[name]
    setting = load_settings(environment(services[name]), (own,), monkeypatch)[own].providers_file  # type: ignore[attr-defined]
    mounts = [str(volume).split(":") for volume in services[name].get("volumes", [])]
    assert [(source, Path(target), mode) for source, target, mode in mounts if Path(target) == setting] == [
        ("./providers.yaml", setting, "ro")
    ], f"{name}: {mounts}"
    # A missing bind-mount source would be created as an empty directory, and the service would fail.
    assert (COMPOSE_FILE.parent / "providers.yaml").resolve() == PROVIDERS_FILE
    assert PROVIDERS_FILE.is_file()


def test_only_the_providers_readers_mount_the_providers_file(services: dict[str, Any]) -> None:
    for name, svc in forgeline_services(services):
        mounted = any(str(volume).startswith("./providers.yaml:") for volume in svc.get("volumes", []))
        assert mounted == (name in PROVIDERS_READERS), name
