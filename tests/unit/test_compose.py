"""docker-compose.yml, the Dockerfile and .env.example, checked as files (no Docker engine here).

Where the ``docker compose`` CLI is installed, ``docker compose config`` validates the file too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devstack import REPO_ROOT
from devstack.processes import worker_argv

SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|AUTH", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def _env_files(service: dict[str, Any]) -> list[str]:
    value = service.get("env_file", [])
    entries = [value] if isinstance(value, (str, dict)) else value
    return [e["path"] if isinstance(e, dict) else e for e in entries]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _env_example() -> dict[str, str]:
    values = {}
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def test_compose_has_redis_worker_flower_the_gateway_and_the_stub(services):
    assert {"redis", "worker", "flower", "gateway", "stubapi"} <= set(services)


def test_redis_has_a_ping_health_check_and_never_evicts_at_a_memory_bound(services):
    redis = services["redis"]
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    command = redis["command"]
    command = command if isinstance(command, list) else command.split()
    at = command.index("--maxmemory-policy")
    assert command[at + 1] == "noeviction"
    # noeviction only acts once maxmemory is reached: without it Redis grows until killed.
    assert re.fullmatch(r"\d+(mb|gb)", command[command.index("--maxmemory") + 1])


def _compose_spec_schema() -> dict[str, Any]:
    # The compose-spec schema as check-jsonschema vendors it (Apache-2.0, its LICENSE beside).
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def test_the_compose_file_is_valid_under_the_compose_specification_schema(compose):
    schema = _compose_spec_schema()
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_compose_schema_check_catches_a_misspelt_key(compose):
    schema = _compose_spec_schema()
    broken = {**compose, "services": {**compose["services"], "redis": {
        **compose["services"]["redis"], "helthcheck": {"test": ["CMD", "true"]}}}}  # fmt: skip
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert any("helthcheck" in e.message for e in validator.iter_errors(broken))


def test_the_env_file_is_optional_for_every_service_that_reads_it(services):
    for name in ("worker", "flower", "gateway"):
        assert services[name]["env_file"] == [{"path": ".env", "required": False}], name


def test_the_vector_cache_is_a_redis_of_its_own_that_evicts_least_recently_used(services):
    command = services["cache"]["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert command[command.index("--maxmemory") + 1].endswith(("mb", "gb"))
    assert "redis-cli" in services["cache"]["healthcheck"]["test"]


def test_the_worker_is_scalable_and_waits_for_a_healthy_redis(services):
    worker = services["worker"]
    assert "container_name" not in worker
    # A published host port would make a second replica fail to start.
    assert "ports" not in worker
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert ".env" in _env_files(worker)


def test_flower_has_auth_from_the_env_file_port_5555_and_state_on_a_volume(compose, services):
    flower = services["flower"]
    command = " ".join(flower["command"])
    # The project's entry point: its login check does not depend on the working directory.
    assert command.startswith("embeddings-flower ")
    assert "--port=5555" in command
    assert "--persistent=True" in command
    db = re.search(r"--db=(\S+)", command)
    assert db is not None
    # Host side on loopback only; /healthcheck is the one page that needs no login.
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert "http://127.0.0.1:5555/healthcheck" in " ".join(flower["healthcheck"]["test"])
    volume, _, mount = flower["volumes"][0].partition(":")
    assert db.group(1).startswith(mount.rstrip("/") + "/")
    assert volume in compose["volumes"]  # a named volume, so state survives a new container
    assert ".env" in _env_files(flower)
    assert "FLOWER_BASIC_AUTH" not in _environment(flower)
    # Every interface inside the container, or the published port could not reach it.
    assert _environment(flower)["FLOWER_ADDRESS"] == "0.0.0.0"
    assert "FLOWER_BASIC_AUTH" in _env_example()
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"


def test_flower_never_holds_the_api_key_even_though_the_env_file_has_it(services):
    env = _environment(services["flower"])
    assert env["EMBEDDINGS_API_KEY"] == ""
    assert env["OPENAI_API_KEY"] == ""


def test_the_gateway_uses_the_image_listens_on_host_loopback_and_checks_healthz(services):
    gateway = services["gateway"]
    assert gateway["image"] == services["worker"]["image"]
    assert gateway["command"] == ["embedding-gateway"]
    assert gateway["ports"] == ["127.0.0.1:8080:8080"]
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert ".env" in _env_files(gateway)
    env = _environment(gateway)
    assert (env["GATEWAY_HOST"], env["GATEWAY_PORT"]) == ("0.0.0.0", "8080")
    # Its keys come from .env; the upstream key is blanked, as for Flower.
    assert "GATEWAY_API_KEYS" not in env
    assert env["EMBEDDINGS_API_KEY"] == "" and env["OPENAI_API_KEY"] == ""
    assert _env_example()["GATEWAY_API_KEYS"] == ""


def test_the_image_contains_the_gateway_package():
    assert "COPY gateway ./gateway" in (REPO_ROOT / "Dockerfile").read_text()


def test_the_stub_api_runs_only_under_the_dev_profile(services):
    assert services["stubapi"]["profiles"] == ["dev"]
    assert all("profiles" not in s for name, s in services.items() if name != "stubapi")


def test_no_secret_is_written_in_the_compose_file(services):
    for name, service in services.items():
        for var, value in _environment(service).items():
            if SECRET_NAME.search(var):
                assert value == "", f"{name}: {var} has a value inline"
            assert not value.startswith("sk-"), f"{name}: {var}"
    assert "sk-" not in (REPO_ROOT / "docker-compose.yml").read_text()


def test_the_env_example_names_the_key_and_the_login_but_gives_neither():
    example = _env_example()
    assert example["EMBEDDINGS_API_KEY"] == ""
    assert example["FLOWER_BASIC_AUTH"] == ""


def test_the_image_bakes_in_no_secret_runs_as_non_root_and_leaves_env_files_out():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    env_lines = [
        ln for ln in dockerfile.splitlines() if ln.strip().upper().startswith(("ENV", "ARG"))
    ]
    assert not any(SECRET_NAME.search(line) for line in env_lines)
    assert "EMBEDDINGS_API_KEY" not in dockerfile
    user = [ln.split()[1] for ln in dockerfile.splitlines() if ln.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    # The project's Flower is in the image, and so is the settings file that guards a plain
    # `celery -A worker flower` started in its working directory.
    assert "COPY embeddings_flower ./embeddings_flower" in dockerfile
    assert "flowerconfig.py" in dockerfile
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored


def _compose_cli() -> list[str] | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        probe = subprocess.run([*argv, "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return argv
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI here")
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copy(REPO_ROOT / ".env.example", tmp_path / ".env")
    done = subprocess.run(
        [*cli, "--profile", "dev", "config", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_worker_runs_the_same_command_in_compose_the_image_the_readme_and_the_tests(
    services,
):
    """One worker command everywhere, mingle off (docs/operations.md, "Start a worker")."""
    command = services["worker"]["command"]
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    assert command == cmd
    assert command[:4] == ["celery", "-A", "worker", "worker"] and "--without-mingle" in command
    readme = (REPO_ROOT / "README.md").read_text()
    assert "celery -A worker worker --without-mingle --loglevel=INFO" in readme
    # The tests' workers too: devstack's argv after the interpreter, less the name and level.
    argv = worker_argv("w@localhost", "INFO")
    assert argv[argv.index("celery") :] == [*command[:-1], "-n", "w@localhost", "--loglevel=INFO"]
