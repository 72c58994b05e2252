"""Settings: seed variable names, config.json errors naming the key, SECRET_KEY rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskflow.config import load_settings, parse_env_file
from taskflow.errors import ConfigError


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"TASKFLOW_ENV_FILE": str(tmp_path / "missing.env"), **extra}


def test_seed_environment_names(tmp_path: Path) -> None:
    settings = load_settings(
        base_env(
            tmp_path,
            POSTGRES_USER="tf user",
            POSTGRES_PASSWORD="p@ss/word",
            POSTGRES_HOST="db",
            POSTGRES_PORT="6543",
            POSTGRES_DB="tasks",
            AMQP_USER="rabbit",
            AMQP_PASSWORD="hole",
            AMQP_PORT="5673",
            MAIL_HOST="smtp.example.com",
            MAIL_PORT="587",
            MAIL_USERNAME="me@example.com",
            MAIL_PASSWORD="mailpw",
            SECRET_KEY="k" * 40,
            NUMOFWORKERS="7",
            BASE_FILE_PATH=str(tmp_path / "files"),
        )
    )
    assert settings.database_url.get_secret_value() == (
        "postgresql://tf%20user:p%40ss%2Fword@db:6543/tasks"
    )
    assert settings.amqp_url is not None
    assert settings.amqp_url.get_secret_value() == "amqp://rabbit:hole@127.0.0.1:5673/%2F"
    assert settings.num_workers == 7
    assert settings.mail_port == 587
    assert settings.mail_sender == "me@example.com"
    assert settings.base_file_path == tmp_path / "files"
    assert "mailpw" not in repr(settings)
    assert "k" * 40 not in repr(settings)


def test_env_file_and_precedence(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\nexport NUMOFWORKERS=5\nSECRET_KEY='quoted value with spaces ok 0123456789'\n"
        "AMQP_QUEUE=from_file # trailing comment\n"
    )
    settings = load_settings({"TASKFLOW_ENV_FILE": str(env_file), "AMQP_QUEUE": "from_env"})
    assert settings.num_workers == 5
    assert settings.amqp_queue == "from_env"
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == "quoted value with spaces ok 0123456789"
    assert parse_env_file(env_file)["AMQP_QUEUE"] == "from_file"


def test_no_broker_unless_configured(tmp_path: Path) -> None:
    assert load_settings(base_env(tmp_path)).amqp_url is None
    assert load_settings(base_env(tmp_path, AMQP_URL="off")).amqp_url is None
    assert load_settings(base_env(tmp_path, AMQP_HOST="rabbit")).broker_enabled


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({"lease_secs": 3}, "lease_secs"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"scheduler_interval_ms": "fast"}, "scheduler_interval_ms"),
        ({"download_allow_private": "maybe"}, "download_allow_private"),
        ({"task_timeout_seconds": {"send_email": -1}}, "task_timeout_seconds.send_email"),
        ({"retry_backoff_base_ms": 5000, "retry_backoff_max_ms": 10}, "retry_backoff_max_ms"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, content: dict[str, object], key: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(base_env(tmp_path, TASKFLOW_CONFIG=str(path)))


def test_seed_camel_case_interval(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"schedulerIntervalMs": 250}')
    settings = load_settings(base_env(tmp_path, TASKFLOW_CONFIG=str(path)))
    assert settings.scheduler_interval_ms == 250


def test_config_not_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_settings(base_env(tmp_path, TASKFLOW_CONFIG=str(path)))


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NUMOFWORKERS"):
        load_settings(base_env(tmp_path, NUMOFWORKERS="many"))


def test_secret_key_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY: required"):
        load_settings(base_env(tmp_path)).require_secret_key()
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        load_settings(base_env(tmp_path, SECRET_KEY="short")).require_secret_key()
    assert load_settings(base_env(tmp_path, SECRET_KEY="x" * 32)).require_secret_key() == b"x" * 32


def test_repo_config_json_is_valid(tmp_path: Path) -> None:
    settings = load_settings(base_env(tmp_path))
    assert settings.scheduler_interval_ms == 1000
    assert settings.task_timeout_seconds["process_image"] == 120
