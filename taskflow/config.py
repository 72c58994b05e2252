"""Settings: the tunables of the JSON settings file at the repository's root
(or the one ``TASKFLOW_CONFIG`` names), plus the environment (and a ``.env``
file).

Loaded once by the CLI and passed down explicitly; nothing else reads
``os.environ``. Precedence, lowest first: defaults, the settings file,
``.env``, the process environment. Any bad key or value stops start-up with its name.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from taskflow.errors import ConfigError

MIB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parent.parent

PositiveSeconds = Annotated[float, Field(gt=0, le=86400 * 7)]


# Task ids per RabbitMQ message: the default, and the most a message of
# TaskFlow's holds (taskflow/broker.py refuses a longer one as not its own).
DEFAULT_IDS_PER_MESSAGE = 128
MAX_IDS_PER_MESSAGE = 1000


class Tunables(BaseModel):
    """The keys the settings file may hold. Unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheduler_interval_ms: Annotated[int, Field(ge=10, le=3_600_000)] = 1000
    lease_seconds: Annotated[float, Field(ge=1, le=86400)] = 30
    retry_backoff_base_ms: Annotated[int, Field(ge=1, le=86_400_000)] = 2000
    retry_backoff_max_ms: Annotated[int, Field(ge=1, le=7 * 86_400_000)] = 600_000
    task_timeout_seconds: dict[str, PositiveSeconds] = Field(
        default_factory=lambda: {
            "send_email": 60.0,
            "process_image": 120.0,
            "download_files": 300.0,
        }
    )
    default_task_timeout_seconds: PositiveSeconds = 300
    download_allow_private: bool = False
    download_max_bytes: Annotated[int, Field(ge=1)] = 50 * MIB
    download_concurrency: Annotated[int, Field(ge=1, le=20)] = 4
    download_connect_timeout_seconds: PositiveSeconds = 10
    download_read_timeout_seconds: PositiveSeconds = 30
    upload_max_bytes: Annotated[int, Field(ge=1)] = 25 * MIB
    request_max_bytes: Annotated[int, Field(ge=1024)] = 2 * MIB
    history_retention_days: Annotated[int, Field(ge=1, le=36500)] = 30
    # Finished tasks stay visible to their owners this long, then go entirely.
    task_retention_days: Annotated[int, Field(ge=1, le=36500)] = 90
    token_ttl_seconds: Annotated[int, Field(ge=60, le=30 * 86400)] = 86400
    republish_after_seconds: Annotated[float, Field(gt=0)] = 30
    scheduler_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 1000
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 10
    worker_poll_interval_ms: Annotated[int, Field(ge=10, le=600_000)] = 2000
    # Task ids published together share a RabbitMQ message up to this many
    # (one publish, one delivery, one ack). A worker claims what its slots can
    # take; the rest stay queued in Postgres, and an idle worker takes them
    # if this one has not claimed them soon (Intake._balance).
    ids_per_message: Annotated[int, Field(ge=1, le=MAX_IDS_PER_MESSAGE)] = DEFAULT_IDS_PER_MESSAGE
    # Claim ahead of free slots what they would start within this time; 0: never.
    worker_claim_ahead_ms: Annotated[int, Field(ge=0, le=60_000)] = 10
    max_lease_crashes: Annotated[int, Field(ge=1, le=100)] = 3
    # How often the scheduler looks for workers whose Postgres session ended
    # (they died) to rescue their tasks: one cheap query on pg_locks.
    worker_liveness_check_ms: Annotated[int, Field(ge=10, le=60_000)] = 250
    reject_past_run_at: bool = False
    # ----- fair share and limits (SPEC §8); user_limits overrides them per
    # user. 0 means no limit.
    user_max_running: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    type_max_running: dict[str, Annotated[int, Field(ge=0, le=1_000_000)]] = Field(
        default_factory=dict
    )
    user_max_active_tasks: Annotated[int, Field(ge=0)] = 10_000
    email_per_user_per_minute: Annotated[int, Field(ge=0)] = 30
    email_per_user_per_day: Annotated[int, Field(ge=0)] = 500
    user_files_max_bytes: Annotated[int, Field(ge=0)] = 1024 * MIB
    # Schedules a user may have (SPEC §9); the tasks they create count as tasks.
    user_max_schedules: Annotated[int, Field(ge=0)] = 100
    # The dispatch window holds the ids workers are expected to start within
    # this time at the recent claim rate (never fewer than their free slots):
    # short enough that a new user's task is not queued behind a long window.
    dispatch_window_ms: Annotated[int, Field(ge=10, le=60_000)] = 200
    # ----- accounts (SPEC §8): failed logins per email, and per client
    # address, within the window; then 429 until it ends, even with the right
    # password. Registrations per client address per hour.
    login_max_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    login_max_failures_per_address: Annotated[int, Field(ge=1, le=100_000)] = 20
    login_window_seconds: Annotated[float, Field(ge=1, le=86400)] = 900
    register_per_address_per_hour: Annotated[int, Field(ge=1, le=100_000)] = 20
    # Argon2 hashes (64 MiB and tens of milliseconds each) run this many at a
    # time, on threads of their own; a login or registration that cannot get
    # one within the wait answers 503 with Retry-After instead of queueing.
    password_hash_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    password_hash_wait_seconds: Annotated[float, Field(gt=0, le=60)] = 5
    # ----- the HTTP server and uploads: a client must send its request headers
    # within this time (slow ones are dropped), and a whole upload within
    # upload_timeout_seconds.
    http_header_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10
    upload_timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 600
    # A list response stops at this many bytes of task JSON (fewer rows, and a
    # Link to the rest), whatever limit the client asked for.
    list_response_max_bytes: Annotated[int, Field(ge=64 * 1024)] = 8 * MIB
    # Temporary files of writers that crashed are removed once this old.
    temporary_file_max_age_seconds: Annotated[float, Field(ge=60)] = 3600

    @model_validator(mode="before")
    @classmethod
    def _seed_names(cls, data: Any) -> Any:
        # The original service's settings file spelled the tick in camelCase.
        if isinstance(data, dict) and "schedulerIntervalMs" in data:
            data = dict(data)
            if "scheduler_interval_ms" in data:
                raise ValueError("give scheduler_interval_ms or schedulerIntervalMs, not both")
            data["scheduler_interval_ms"] = data.pop("schedulerIntervalMs")
        return data

    @model_validator(mode="after")
    def _backoff_order(self) -> Tunables:
        if self.retry_backoff_max_ms < self.retry_backoff_base_ms:
            raise ValueError("retry_backoff_max_ms must be >= retry_backoff_base_ms")
        return self

    def timeout_for(self, task_type: str) -> float:
        return self.task_timeout_seconds.get(task_type, self.default_task_timeout_seconds)


class Settings(Tunables):
    """Everything a TaskFlow process needs, frozen once loaded."""

    database_url: SecretStr
    amqp_url: SecretStr | None = None
    amqp_queue: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")] = "tasks"
    # quorum: RabbitMQ's replicated queue (SPEC §10), for a cluster; it runs
    # on one node too. A queue keeps the type it was created with: switching
    # needs a new AMQP_QUEUE name (or the old queue deleted).
    amqp_queue_type: Literal["classic", "quorum"] = "classic"
    mail_host: str = "127.0.0.1"
    mail_port: Annotated[int, Field(ge=1, le=65535)] = 25
    mail_username: str | None = None
    mail_password: SecretStr | None = None
    mail_from: str | None = None
    mail_use_tls: bool = False
    secret_key: SecretStr | None = None
    num_workers: Annotated[int, Field(ge=1, le=1000)] = 3
    api_processes: Annotated[int, Field(ge=1, le=64)] = 1
    base_file_path: Path = REPO_ROOT / ".state" / "files"
    plugins: tuple[str, ...] = ()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    config_path: Path | None = None

    @property
    def broker_enabled(self) -> bool:
        return self.amqp_url is not None

    @property
    def mail_sender(self) -> str:
        return self.mail_from or self.mail_username or "taskflow@localhost"

    def require_secret_key(self) -> bytes:
        """The API signs tokens with this; refuse weak or missing keys."""
        if self.secret_key is None:
            raise ConfigError("SECRET_KEY: required by the API (at least 32 bytes)")
        raw = self.secret_key.get_secret_value().encode()
        if len(raw) < 32:
            raise ConfigError(f"SECRET_KEY: must be at least 32 bytes, got {len(raw)}")
        return raw


def parse_env_file(path: Path) -> dict[str, str]:
    """Read ``KEY=VALUE`` lines; ``#`` comments, ``export`` and quotes allowed."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def _database_url(env: Mapping[str, str]) -> str:
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"]
    user = env.get("POSTGRES_USER") or getpass.getuser()
    password = env.get("POSTGRES_PASSWORD", "")
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    host = env.get("POSTGRES_HOST", "127.0.0.1")
    port = env.get("POSTGRES_PORT", "5432")
    database = env.get("POSTGRES_DB", "taskflow")
    return f"postgresql://{auth}@{host}:{port}/{quote(database, safe='')}"


_AMQP_PARTS = ("AMQP_HOST", "AMQP_PORT", "AMQP_USER", "AMQP_PASSWORD")
_DISABLED = {"", "0", "off", "none", "false", "disabled"}


def _amqp_url(env: Mapping[str, str]) -> str | None:
    """None means "run without a broker": AMQP_URL=off, or nothing AMQP_* set."""
    if "AMQP_URL" in env:
        url = env["AMQP_URL"]
        return None if url.strip().lower() in _DISABLED else url
    if not any(env.get(name) for name in _AMQP_PARTS):
        return None
    user = quote(env.get("AMQP_USER") or "guest", safe="")
    password = quote(env.get("AMQP_PASSWORD") or "guest", safe="")
    host = env.get("AMQP_HOST") or "127.0.0.1"
    port = env.get("AMQP_PORT") or "5672"
    vhost = quote(env.get("AMQP_VHOST", "/"), safe="")
    return f"amqp://{user}:{password}@{host}:{port}/{vhost}"


_ENV_FIELDS = {
    "AMQP_QUEUE": "amqp_queue",
    "AMQP_QUEUE_TYPE": "amqp_queue_type",
    "MAIL_HOST": "mail_host",
    "MAIL_PORT": "mail_port",
    "MAIL_USERNAME": "mail_username",
    "MAIL_PASSWORD": "mail_password",
    "MAIL_FROM": "mail_from",
    "MAIL_USE_TLS": "mail_use_tls",
    "SECRET_KEY": "secret_key",
    "NUMOFWORKERS": "num_workers",
    "API_PROCESSES": "api_processes",
    "BASE_FILE_PATH": "base_file_path",
    "TASKFLOW_LOG_LEVEL": "log_level",
    "TASKFLOW_LOG_FORMAT": "log_format",
}


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings once; raise ConfigError naming the bad key."""
    process_env = dict(os.environ if environ is None else environ)
    env_file = Path(process_env.get("TASKFLOW_ENV_FILE", ".env"))
    env: dict[str, str] = {}
    if env_file.is_file():
        env.update(parse_env_file(env_file))
    env.update(process_env)

    config_path = Path(env.get("TASKFLOW_CONFIG") or REPO_ROOT / "config.json")
    file_values: dict[str, Any] = {}
    if config_path.is_file():
        try:
            file_values = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{config_path}: not valid JSON: {exc}") from None
        if not isinstance(file_values, dict):
            raise ConfigError(f"{config_path}: must hold a JSON object")
    elif "TASKFLOW_CONFIG" in env:
        raise ConfigError(f"TASKFLOW_CONFIG: no such file: {config_path}")

    try:
        Tunables.model_validate(file_values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, f"{config_path}")) from None

    values: dict[str, Any] = dict(file_values)
    values["config_path"] = config_path if config_path.is_file() else None
    values["database_url"] = _database_url(env)
    values["amqp_url"] = _amqp_url(env)
    for name, field in _ENV_FIELDS.items():
        if env.get(name) not in (None, ""):
            values[field] = env[name]
    if env.get("TASKFLOW_PLUGINS"):
        values["plugins"] = tuple(
            p.strip() for p in env["TASKFLOW_PLUGINS"].split(",") if p.strip()
        )
    values.update(overrides or {})
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "settings")) from None


_FIELD_SOURCES = {field: env_name for env_name, field in _ENV_FIELDS.items()}


def _describe(exc: ValidationError, where: str) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        source = _FIELD_SOURCES.get(str(error["loc"][0])) if error["loc"] else None
        label = f"{key} ({source})" if source else key
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{label}: {message}")
    return f"invalid {where}: " + "; ".join(problems)
