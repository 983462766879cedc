"""Typed settings read from the environment and an optional ``.env`` file.

Every setting is declared once in ``FIELDS``; ``.env.example`` and the README are checked against
that table by the tests, so a setting cannot exist without being documented.  Loading collects
every problem before failing, so an operator fixes the whole configuration in one round.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Groups of settings that only some roles need: the web tier alone never talks to STARFACE.
CORE = "core"
GRAPH_APP = "graph_app"
STARFACE = "starface"


# What ``serve --role`` accepts.
ROLES = ("all", "web", "worker", "scheduler")


def required_groups(role: str) -> list[str]:
    """Settings groups a role needs: the web tier alone talks to neither STARFACE nor Graph."""
    return [CORE] if role == "web" else [CORE, GRAPH_APP, STARFACE]


class SettingsError(Exception):
    """The configuration cannot be used; ``problems`` names every bad or missing key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"configuration has {len(problems)} problem(s):\n{lines}")


def _https_url(value: str) -> str:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme != "https" or not parsed.netloc:
        raise ValueError("must be an https:// URL")
    return value.rstrip("/")


def _http_url(value: str) -> str:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def _redis_url(value: str) -> str:
    if urllib.parse.urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return value


def _secret_key(value: str) -> str:
    if len(value) < 32:
        raise ValueError(
            "must be at least 32 characters; generate one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def _minutes_5_240(value: str) -> int:
    minutes = int(value)
    if not 5 <= minutes <= 240:
        raise ValueError("must be between 5 and 240 (Graph's setPresence accepts PT5M to PT4H)")
    return minutes


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _existing_file(value: str) -> str:
    if not Path(value).is_file():
        raise ValueError(f"file {value!r} does not exist")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return check


def _namespace(value: str) -> str:
    if not (value.startswith("v") and value[1:].isdigit()):
        raise ValueError("must look like v30 or v22")
    return value


@dataclass(frozen=True)
class Field:
    env: str
    attr: str
    parse: Callable[[str], Any]
    default: Any
    group: str | None
    help: str


# group=None: optional everywhere.  Otherwise: required when that group is requested.
FIELDS: tuple[Field, ...] = (
    Field(
        "REDIS_URL",
        "redis_url",
        _redis_url,
        None,
        None,
        "Redis/Valkey URL; unset = an embedded Valkey for one machine only",
    ),
    Field(
        "DATA_DIR", "data_dir", str, "./data", None, "Directory for the embedded Valkey's append-only file"
    ),
    Field(
        "PUBLIC_BASE_URL",
        "public_base_url",
        _https_url,
        None,
        CORE,
        "Public https base URL that Graph and STARFACE call back",
    ),
    Field(
        "BRIDGE_SECRET_KEY",
        "secret_key",
        _secret_key,
        None,
        CORE,
        "Key (>= 32 chars) that encrypts stored tokens, credentials and private keys",
    ),
    Field("AZURE_TENANT_ID", "tenant_id", str, None, CORE, "Entra directory (tenant) id"),
    Field("AZURE_CLIENT_ID", "client_id", str, None, CORE, "Application (client) id of the app registration"),
    Field(
        "AZURE_CLIENT_SECRET", "client_secret", str, None, GRAPH_APP, "Client secret of the app registration"
    ),
    Field(
        "GRAPH_BASE_URL",
        "graph_base_url",
        _https_url,
        "https://graph.microsoft.com",
        None,
        "Microsoft Graph base URL",
    ),
    Field(
        "AUTHORITY_BASE_URL",
        "authority_base_url",
        _https_url,
        "https://login.microsoftonline.com",
        None,
        "Entra ID authority base URL",
    ),
    Field(
        "OPENID_METADATA_URL",
        "openid_metadata_url",
        _https_url,
        None,
        None,
        "OpenID metadata naming the JWKS for validationTokens; default <authority>/common/v2.0/...",
    ),
    Field(
        "EXTRA_CA_FILE",
        "extra_ca_file",
        _existing_file,
        None,
        None,
        "Extra CA bundle (PEM) trusted for Graph, Entra and STARFACE, e.g. a sandbox CA",
    ),
    Field(
        "NOTIFICATION_MAX_BYTES",
        "notification_max_bytes",
        _positive_int,
        1024 * 1024,
        None,
        "Largest accepted notification body in bytes",
    ),
    Field(
        "PRESENCE_STREAM_MAXLEN",
        "presence_stream_maxlen",
        _positive_int,
        1_000_000,
        None,
        "Approximate cap of the presence stream; keep far above any backlog",
    ),
    Field(
        "JWKS_REFRESH_SECONDS",
        "jwks_refresh_seconds",
        _positive_int,
        3600,
        None,
        "How often signing keys are refreshed in the background",
    ),
    Field(
        "WORKER_MAX_DELIVERIES",
        "worker_max_deliveries",
        _positive_int,
        5,
        None,
        "Deliveries after which a failing stream entry moves to the dead-letter stream",
    ),
    Field(
        "WORKER_CLAIM_IDLE_MS",
        "worker_claim_idle_ms",
        _positive_int,
        60_000,
        None,
        "Idle time after which a dead consumer's pending entries are reclaimed",
    ),
    Field("WORKER_BATCH", "worker_batch", _positive_int, 100, None, "Stream entries read per worker round"),
    Field(
        "RECONCILE_CONCURRENCY",
        "reconcile_concurrency",
        _positive_int,
        100,
        None,
        "Users one worker process reconciles at the same time (each waits on STARFACE or Graph)",
    ),
    Field("LOG_LEVEL", "log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", None, "Log level"),
    Field(
        "STARFACE_BASE_URL",
        "starface_base_url",
        _http_url,
        None,
        STARFACE,
        "STARFACE PBX base URL, e.g. https://pbx.example.com",
    ),
    Field(
        "STARFACE_ADMIN_LOGIN",
        "starface_admin_login",
        str,
        None,
        STARFACE,
        "Login ID used for REST directory reads",
    ),
    Field(
        "STARFACE_ADMIN_PASSWORD",
        "starface_admin_password",
        str,
        None,
        STARFACE,
        "Password of STARFACE_ADMIN_LOGIN",
    ),
    Field(
        "STARFACE_AUTH",
        "starface_auth",
        _choice("legacy", "oauth"),
        "legacy",
        None,
        "legacy = SHA-512 login tokens (STARFACE <= 10); oauth = STARFACE 10 password grant",
    ),
    Field(
        "STARFACE_OAUTH_CLIENT_SECRET",
        "starface_oauth_client_secret",
        str,
        None,
        None,
        "Client secret of rest-client-headless (only with STARFACE_AUTH=oauth)",
    ),
    Field(
        "STARFACE_UCI_NAMESPACE",
        "starface_uci_namespace",
        _namespace,
        "v30",
        None,
        "UCI namespace: v30 (STARFACE >= 7.3) or v22",
    ),
    Field(
        "STARFACE_KEEPALIVE_SECONDS",
        "starface_keepalive_seconds",
        _positive_int,
        30,
        None,
        "Interval of UCI keepAlive calls per user session",
    ),
    Field("STARFACE_SELECT_ALL", "starface_select_all", _bool, False, None, "Bridge every STARFACE user"),
    Field(
        "STARFACE_GROUP",
        "starface_group",
        str,
        None,
        None,
        "Bridge the members of this STARFACE group (name or id)",
    ),
    Field(
        "STARFACE_EXTRA_LOGINS",
        "starface_extra_logins",
        _csv,
        (),
        None,
        "Comma-separated extra login IDs to bridge",
    ),
    Field(
        "STARFACE_DIRECTORY_REFRESH_SECONDS",
        "starface_directory_refresh_seconds",
        _positive_int,
        600,
        None,
        "How often the STARFACE user directory is re-read",
    ),
    Field(
        "GRAPH_SERVICE_ACCOUNTS",
        "graph_service_accounts",
        _csv,
        (),
        None,
        "Comma-separated service accounts (UPNs) that hold presence subscriptions, 650 users each",
    ),
    Field(
        "RESYNC_INTERVAL_SECONDS",
        "resync_interval_seconds",
        _positive_int,
        900,
        None,
        "Interval of full getPresencesByUserId sweeps that repair missed notifications",
    ),
    Field(
        "SCHEDULER_LEASE_SECONDS",
        "scheduler_lease_seconds",
        _positive_int,
        30,
        None,
        "Time-to-live of the scheduler lease; a dead leader is replaced within it",
    ),
    Field(
        "SCHEDULER_PASS_SECONDS",
        "scheduler_pass_seconds",
        _positive_int,
        60,
        None,
        "Pause between scheduler passes (directory e-mails, shards, renewals, lifecycle events)",
    ),
    Field(
        "TEAMS_PRESENCE_MINUTES",
        "teams_presence_minutes",
        _minutes_5_240,
        5,
        None,
        "Lifetime of the Teams presence the bridge sets for a STARFACE call; re-sent before it ends",
    ),
    Field(
        "MAPPING_FILE",
        "mapping_file",
        _existing_file,
        None,
        None,
        "TOML mapping of Teams states to STARFACE DND and status text; unset = built-in default",
    ),
)


def _default_metadata(authority: str) -> str:
    return f"{authority}/common/v2.0/.well-known/openid-configuration"


@dataclass(frozen=True)
class Settings:
    public_base_url: str
    secret_key: str = field(repr=False)
    tenant_id: str
    client_id: str
    redis_url: str | None = None
    data_dir: str = "./data"
    client_secret: str | None = field(default=None, repr=False)
    graph_base_url: str = "https://graph.microsoft.com"
    authority_base_url: str = "https://login.microsoftonline.com"
    openid_metadata_url: str = ""
    extra_ca_file: str | None = None
    notification_max_bytes: int = 1024 * 1024
    presence_stream_maxlen: int = 1_000_000
    jwks_refresh_seconds: int = 3600
    worker_max_deliveries: int = 5
    worker_claim_idle_ms: int = 60_000
    worker_batch: int = 100
    reconcile_concurrency: int = 100
    log_level: str = "INFO"
    starface_base_url: str | None = None
    starface_admin_login: str | None = None
    starface_admin_password: str | None = field(default=None, repr=False)
    starface_auth: str = "legacy"
    starface_oauth_client_secret: str | None = field(default=None, repr=False)
    starface_uci_namespace: str = "v30"
    starface_keepalive_seconds: int = 30
    starface_select_all: bool = False
    starface_group: str | None = None
    starface_extra_logins: tuple[str, ...] = ()
    starface_directory_refresh_seconds: int = 600
    graph_service_accounts: tuple[str, ...] = ()
    resync_interval_seconds: int = 900
    scheduler_lease_seconds: int = 30
    scheduler_pass_seconds: int = 60
    teams_presence_minutes: int = 5
    mapping_file: str | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        env_file: str | Path | None = ".env",
        require: Iterable[str] = (CORE,),
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) over an optional ``.env`` file.

        Raises ``SettingsError`` naming every missing or invalid key at once.
        """
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update(read_env_file(Path(env_file)))
        values.update(os.environ if environ is None else environ)
        groups = set(require)
        problems: list[str] = []
        kwargs: dict[str, Any] = {}
        for spec in FIELDS:
            raw = values.get(spec.env, "").strip()
            if not raw:
                if spec.group is not None and spec.group in groups:
                    problems.append(f"{spec.env} is missing: {spec.help}")
                continue
            try:
                kwargs[spec.attr] = spec.parse(raw)
            except ValueError as exc:
                problems.append(f"{spec.env} {exc}")
        if (
            STARFACE in groups
            and values.get("STARFACE_AUTH", "legacy") == "oauth"
            and not values.get("STARFACE_OAUTH_CLIENT_SECRET")
        ):
            problems.append("STARFACE_OAUTH_CLIENT_SECRET is missing: needed when STARFACE_AUTH=oauth")
        if problems:
            raise SettingsError(problems)
        # Fields of groups that were not requested may be absent; the dataclass still needs a value.
        for name in ("public_base_url", "secret_key", "tenant_id", "client_id"):
            kwargs.setdefault(name, "")
        authority = kwargs.get("authority_base_url", cls.authority_base_url)
        kwargs.setdefault("openid_metadata_url", _default_metadata(authority))
        return cls(**kwargs)

    def masked(self) -> dict[str, Any]:
        """All settings with secrets replaced, for ``status`` output and logs."""
        secret = {f.name for f in fields(self) if f.repr is False}
        return {
            f.name: ("***" if f.name in secret and getattr(self, f.name) else getattr(self, f.name))
            for f in fields(self)
        }


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; ``#`` starts a comment line; surrounding quotes are removed."""
    result: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            raise SettingsError([f"{path}:{number}: expected KEY=VALUE, got {stripped[:40]!r}"])
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        result[key.strip().removeprefix("export ").strip()] = value
    return result
