"""ops/Dockerfile and ops/docker-compose.yml, checked without Docker: the compose
file's services, builds, environment, volumes and start order; the Dockerfile's
base image, user, entrypoint, and that everything it copies exists and is not
excluded from the build context."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskflow.cli import build_parser
from taskflow.config import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
OPS = REPO_ROOT / "ops"
COMPOSE = OPS / "docker-compose.yml"
DOCKERFILE = OPS / "Dockerfile"
CONSTRAINTS = "requirements/constraints.txt"
TASKFLOW_SERVICES = ("migrate", "api", "scheduler", "worker")
SEED_VARIABLES = {
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_DB",
    "AMQP_USER",
    "AMQP_PASSWORD",
    "AMQP_HOST",
    "AMQP_PORT",
    "MAIL_HOST",
    "MAIL_PORT",
    "MAIL_USERNAME",
    "MAIL_PASSWORD",
    "SECRET_KEY",
    "NUMOFWORKERS",
    "BASE_FILE_PATH",
}
# What an operator's .env would hold: the secrets compose insists on.
DOT_ENV = {
    "POSTGRES_PASSWORD": "pg-secret",
    "AMQP_PASSWORD": "amqp-secret",
    "SECRET_KEY": "k" * 48,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (and $$ for $)."""

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        if env.get(name):
            return env[name]
        if operator == ":?":
            raise KeyError(f"{name}: {argument}")
        return argument if operator == ":-" else ""

    value = re.sub(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", replace, value)
    return value.replace("$$", "$")


def test_the_stack_has_every_component(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "rabbitmq", *TASKFLOW_SERVICES} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["rabbitmq"]["image"].startswith("rabbitmq:")
    for name in (*TASKFLOW_SERVICES, "status"):
        build = services[name]["build"]
        # The Dockerfile lives in ops/; the context is the repository root.
        assert (COMPOSE.parent / build["context"]).resolve() == REPO_ROOT, name
        assert (REPO_ROOT / build["dockerfile"]).resolve() == DOCKERFILE, name
        # Each command is one the CLI really accepts.
        build_parser().parse_args(services[name]["command"])
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["worker"]["command"][0] == "worker"
    assert int(interpolate(str(services["worker"]["deploy"]["replicas"]), {})) >= 2


def test_start_order_and_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "rabbitmq", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "scheduler", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["postgres"] == {"condition": "service_healthy"}, name
        assert depends["rabbitmq"] == {"condition": "service_healthy"}, name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])


def test_the_file_area_is_one_named_volume_at_base_file_path(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"files", "pgdata"} <= set(compose["volumes"])
    for name in ("api", "worker"):
        base = services[name]["environment"]["BASE_FILE_PATH"]
        assert f"files:{base}" in services[name]["volumes"], name
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_the_environment_uses_the_seed_names_and_configures_taskflow(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    services = compose["services"]
    for name in TASKFLOW_SERVICES:
        environment = services[name]["environment"]
        assert set(environment) == SEED_VARIABLES, name
        with pytest.raises(KeyError, match="SECRET_KEY"):
            interpolate(environment["SECRET_KEY"], {})  # no default for a secret

    resolved = {
        key: interpolate(str(value), DOT_ENV)
        for key, value in services["worker"]["environment"].items()
    }
    # The real settings loader reads them as the containers would.
    settings = load_settings(
        {**resolved, "TASKFLOW_ENV_FILE": str(tmp_path / "none"), "TASKFLOW_CONFIG": ""}
    )
    database = settings.database_url.get_secret_value()
    assert database == "postgresql://taskflow:pg-secret@postgres:5432/taskflow"
    assert settings.amqp_url is not None
    assert settings.amqp_url.get_secret_value().startswith(
        "amqp://taskflow:amqp-secret@rabbitmq:5672/"
    )
    assert str(settings.base_file_path) == "/data/files"
    assert settings.num_workers == 3
    assert settings.secret_key is not None
    # Postgres and RabbitMQ are created with the same credentials TaskFlow uses.
    postgres = {k: interpolate(v, DOT_ENV) for k, v in services["postgres"]["environment"].items()}
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]) == ("taskflow", "pg-secret")
    rabbit = {k: interpolate(v, DOT_ENV) for k, v in services["rabbitmq"]["environment"].items()}
    assert (rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"]) == (
        "taskflow",
        "amqp-secret",
    )


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _ignored(path: str) -> bool:
    """The Dockerfile's own ignore file: later lines win, `!` re-includes."""
    ignored = False
    for raw in (OPS / "Dockerfile.dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_the_dockerfile_builds_a_slim_non_root_taskflow_image() -> None:
    instructions = _instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert all(stage.split()[0] == "python:3.11-slim" for stage in stages)
    final = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    runtime = instructions[final:]
    [user] = [rest for keyword, rest in runtime if keyword == "USER"]
    assert user not in ("root", "0")
    assert any(keyword == "RUN" and "useradd" in rest and user in rest for keyword, rest in runtime)
    [entrypoint] = [rest for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    assert entrypoint == '["taskflow"]'
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "taskflow" in scripts
    # TaskFlow is installed at the versions the tests ran with: the same
    # constraints file as ops/lib.sh, for the dependencies and the build backend.
    [install] = [
        rest for keyword, rest in instructions if keyword == "RUN" and "--build-constraint" in rest
    ]
    pip_install = install.split("&&")[-1].split()
    assert pip_install[:2] == ["/opt/taskflow/bin/pip", "install"]
    assert pip_install[-1] == "."
    options = pip_install[2:-1]
    assert options[options.index("-c") + 1] == CONSTRAINTS
    assert options[options.index("--build-constraint") + 1] == CONSTRAINTS
    assert f'CONSTRAINTS="$ROOT/{CONSTRAINTS}"' in (OPS / "lib.sh").read_text()


def test_everything_the_dockerfile_copies_exists_in_the_context() -> None:
    copied = []
    for keyword, rest in _instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _destination = shlex.split(rest)
        copied += sources
    assert {
        "pyproject.toml",
        "README.md",
        CONSTRAINTS,
        "taskflow",
        "db",
        "ops/sql",
        "config.json",
    } <= set(copied)
    for source in copied:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source), f"COPY {source}: excluded by ops/Dockerfile.dockerignore"
    # The wheel force-includes the SQL files: the image needs them in the context.
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    force = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert all(any(f"{source}/".startswith(f"{c}/") for c in copied) for source in force)
    assert _ignored(".venv/bin/python")
    assert _ignored(".state/secret_key")
    assert _ignored("taskflow/__pycache__/cli.cpython-311.pyc")
