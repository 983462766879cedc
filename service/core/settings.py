"""Typed settings read from the environment, an optional ``.env`` file and secret files.

Every setting is declared once, in the ``Settings`` schema (pydantic-settings): name, type,
default, help text and the role group that needs it.  ``FIELDS`` is derived from it, and
``.env.example`` is checked against it by the tests, so a setting cannot exist undocumented.
Any ``NAME`` may instead be given as ``NAME_FILE``, the path of a file holding the value (Docker
and Kubernetes secrets).  Loading collects every problem before failing, so an operator fixes the
whole configuration in one round.
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from dotenv import dotenv_values
from pydantic import BeforeValidator, SecretStr, ValidationError
from pydantic import Field as SchemaField
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.core.partitions import MAX_PARTITIONS, Partitions
from service.core.roles import CORE, GRAPH_APP, ROLES, STARFACE, SettingsError, required_groups

__all__ = ["CORE", "FIELDS", "GRAPH_APP", "ROLES", "STARFACE", "Settings", "SettingsError", "required_groups"]


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


# A cluster is named by its own scheme: the client differs, and a plain URL to one cluster node
# would fail later with MOVED errors instead of at start.
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
REDIS_SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)


def _redis_url(value: str) -> str:
    if urllib.parse.urlsplit(value).scheme not in REDIS_SCHEMES:
        raise ValueError(
            "must start with redis://, rediss:// or unix:// (one server), "
            "or redis+cluster:// or rediss+cluster:// (a Redis Cluster)"
        )
    return value


def _partitions(value: str) -> int:
    count = _positive_int(value)
    if count > MAX_PARTITIONS:
        raise ValueError(f"must be at most {MAX_PARTITIONS}")
    return count


def _secret_key(value: str) -> str:
    if len(value) < 32:
        raise ValueError(
            "must be at least 32 characters; generate one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return value


_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _tenant_guid(value: str) -> str:
    # Graph sends tenantId as a lower-case GUID; a domain here would drop every notification.
    if not _GUID.match(value):
        raise ValueError(
            "must be the directory (tenant) ID, a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47, "
            "not a domain: Entra admin center > Overview > Tenant ID"
        )
    return value.lower()


def _previous_keys(value: str) -> str:
    for part in value.split(","):
        if len(part.strip()) < 32:
            raise ValueError(
                "must be comma-separated keys of at least 32 characters each (the keys that "
                "BRIDGE_SECRET_KEY replaces)"
            )
    return value


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or a positive whole number")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def _poll_seconds(value: str) -> float:
    number = float(value)
    if not 0.5 <= number <= 3600:
        raise ValueError("must be a number of seconds from 0.5 to 3600")
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


# The Entra properties a STARFACE e-mail address may match, in the default order of preference.
USER_MATCH_PROPERTIES = ("mail", "userPrincipalName", "proxyAddresses")


def _match_order(value: str) -> tuple[str, ...]:
    known = USER_MATCH_PROPERTIES
    chosen = _csv(value)
    wrong = [p for p in chosen if p not in known]
    if not chosen or wrong or len(set(chosen)) != len(chosen):
        raise ValueError(f"must be a comma-separated order of {', '.join(known)}, each at most once")
    return chosen


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError("must be a port number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise ValueError("must be a port number from 1 to 65535")
    return port


def _password_hash(value: str) -> str:
    # Imported here: the hash format is owned by the console, and only a set value needs it.
    from service.core.passwords import check_format

    check_format(value)
    return value


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


def _setting(default: Any, env: str, help: str, group: str | None = None) -> Any:
    return SchemaField(default, alias=env, description=help, json_schema_extra={"group": group})


def reveal(value: SecretStr | None) -> str | None:
    """The plain value of an optional secret, for the one place that hands it to a library."""
    return None if value is None else value.get_secret_value()


def _default_metadata(authority: str) -> str:
    return f"{authority}/common/v2.0/.well-known/openid-configuration"


class Settings(BaseSettings):
    """The bridge's configuration; build it with ``Settings.from_env``."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, validate_default=False
    )

    redis_url: Annotated[str | None, BeforeValidator(_redis_url)] = _setting(
        None, "REDIS_URL", "Redis/Valkey URL; unset = an embedded Valkey for one machine only"
    )
    redis_partitions: Annotated[int, BeforeValidator(_partitions)] = _setting(
        1,
        "REDIS_PARTITIONS",
        "Partitions of the work streams and due-set; on Redis Cluster a few per master node",
    )
    data_dir: str = _setting("./data", "DATA_DIR", "Directory for the embedded Valkey's append-only file")
    public_base_url: Annotated[str, BeforeValidator(_https_url)] = _setting(
        "", "PUBLIC_BASE_URL", "Public https base URL that Graph and STARFACE call back", group=CORE
    )
    secret_key: Annotated[SecretStr, BeforeValidator(_secret_key)] = _setting(
        SecretStr(""),
        "BRIDGE_SECRET_KEY",
        "Key (>= 32 chars) that encrypts stored tokens, credentials and private keys",
        group=CORE,
    )
    secret_key_previous: Annotated[SecretStr | None, BeforeValidator(_previous_keys)] = _setting(
        None,
        "BRIDGE_SECRET_KEY_PREVIOUS",
        "Comma-separated earlier BRIDGE_SECRET_KEYs still accepted for reading while a rotation runs",
    )
    tenant_id: Annotated[str, BeforeValidator(_tenant_guid)] = _setting(
        "", "AZURE_TENANT_ID", "Entra directory (tenant) id, a GUID", group=CORE
    )
    client_id: str = _setting(
        "", "AZURE_CLIENT_ID", "Application (client) id of the app registration", group=CORE
    )
    client_secret: SecretStr | None = _setting(
        None, "AZURE_CLIENT_SECRET", "Client secret of the app registration", group=GRAPH_APP
    )
    graph_base_url: Annotated[str, BeforeValidator(_https_url)] = _setting(
        "https://graph.microsoft.com", "GRAPH_BASE_URL", "Microsoft Graph base URL"
    )
    authority_base_url: Annotated[str, BeforeValidator(_https_url)] = _setting(
        "https://login.microsoftonline.com", "AUTHORITY_BASE_URL", "Entra ID authority base URL"
    )
    openid_metadata_url: Annotated[str, BeforeValidator(_https_url)] = _setting(
        "",
        "OPENID_METADATA_URL",
        "OpenID metadata naming the JWKS for validationTokens; default <authority>/common/v2.0/...",
    )
    extra_ca_file: Annotated[str | None, BeforeValidator(_existing_file)] = _setting(
        None,
        "EXTRA_CA_FILE",
        "Extra CA bundle (PEM) trusted for Graph, Entra and STARFACE, e.g. a sandbox CA",
    )
    notification_max_bytes: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        4 * 1024 * 1024,
        "NOTIFICATION_MAX_BYTES",
        "Largest accepted notification body in bytes (Graph's batch size is not documented)",
    )
    presence_stream_maxlen: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        1000000,
        "PRESENCE_STREAM_MAXLEN",
        "Approximate cap of the presence stream; keep far above any backlog",
    )
    jwks_refresh_seconds: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        3600, "JWKS_REFRESH_SECONDS", "How often signing keys are refreshed in the background"
    )
    worker_max_deliveries: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        5,
        "WORKER_MAX_DELIVERIES",
        "Deliveries after which a failing stream entry moves to the dead-letter stream",
    )
    dead_letter_max_entries: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        10000, "DEAD_LETTER_MAX_ENTRIES", "Most dead letters kept; the oldest beyond it are dropped"
    )
    dead_letter_max_age_days: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        14, "DEAD_LETTER_MAX_AGE_DAYS", "Days a dead letter is kept for inspection and replay"
    )
    worker_claim_idle_ms: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        60000, "WORKER_CLAIM_IDLE_MS", "Idle time after which a dead consumer's pending entries are reclaimed"
    )
    worker_batch: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        100, "WORKER_BATCH", "Stream entries read per worker round"
    )
    reconcile_concurrency: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        100,
        "RECONCILE_CONCURRENCY",
        "Users one worker process reconciles at the same time (each waits on STARFACE or Graph)",
    )
    web_max_in_flight: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        16,
        "WEB_MAX_IN_FLIGHT",
        "Requests one web process works on at once; beyond, an immediate 503 that Graph retries",
    )
    web_header_timeout_seconds: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        10,
        "WEB_HEADER_TIMEOUT_SECONDS",
        "Seconds a connection may take to send a request's headers (after opening or its last answer)",
    )
    web_body_timeout_seconds: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        10, "WEB_BODY_TIMEOUT_SECONDS", "A request body not received this long after the headers gets 408"
    )
    web_keepalive_seconds: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        5, "WEB_KEEPALIVE_SECONDS", "An idle keep-alive connection is closed after this long"
    )
    access_log: Annotated[bool, BeforeValidator(_bool)] = _setting(
        True, "ACCESS_LOG", "Log every request to the public endpoints as JSON (method, path, status, time)"
    )
    log_level: Annotated[str, BeforeValidator(_choice("DEBUG", "INFO", "WARNING", "ERROR"))] = _setting(
        "INFO", "LOG_LEVEL", "Log level"
    )
    starface_base_url: Annotated[str | None, BeforeValidator(_http_url)] = _setting(
        None, "STARFACE_BASE_URL", "STARFACE PBX base URL, e.g. https://pbx.example.com", group=STARFACE
    )
    starface_admin_login: str | None = _setting(
        None, "STARFACE_ADMIN_LOGIN", "Login ID used for REST directory reads", group=STARFACE
    )
    starface_admin_password: SecretStr | None = _setting(
        None, "STARFACE_ADMIN_PASSWORD", "Password of STARFACE_ADMIN_LOGIN", group=STARFACE
    )
    starface_auth: Annotated[str, BeforeValidator(_choice("legacy", "oauth"))] = _setting(
        "legacy",
        "STARFACE_AUTH",
        "legacy = SHA-512 login tokens (STARFACE <= 10); oauth = STARFACE 10 password grant",
    )
    starface_oauth_client_secret: SecretStr | None = _setting(
        None,
        "STARFACE_OAUTH_CLIENT_SECRET",
        "Client secret of rest-client-headless (only with STARFACE_AUTH=oauth)",
    )
    starface_uci_namespace: Annotated[str, BeforeValidator(_namespace)] = _setting(
        "v30", "STARFACE_UCI_NAMESPACE", "UCI namespace: v30 (STARFACE >= 7.3) or v22"
    )
    starface_callback_on_every_request: Annotated[bool, BeforeValidator(_bool)] = _setting(
        True,
        "STARFACE_CALLBACK_ON_EVERY_REQUEST",
        "Send the UCI callback parameters on every request, as public UCI clients do, not only at login",
    )
    starface_keepalive_seconds: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        30, "STARFACE_KEEPALIVE_SECONDS", "Interval of UCI keepAlive calls per user session"
    )
    starface_read_back: Annotated[bool, BeforeValidator(_bool)] = _setting(
        True,
        "STARFACE_READ_BACK",
        "Read each user's DND and status text (UCI getUserState) with every keepAlive, to restore "
        "an overwritten text and notice DND switched on the phone",
    )
    starface_rewrites_per_hour: Annotated[int, BeforeValidator(_non_negative_int)] = _setting(
        6,
        "STARFACE_REWRITES_PER_HOUR",
        "At most this many writes per user and hour that restore what someone else overwrote on "
        "STARFACE (e.g. the UCC client's status text); 0 = never restore",
    )
    starface_dnd_policy: Annotated[str, BeforeValidator(_choice("respect", "enforce"))] = _setting(
        "respect",
        "STARFACE_DND_POLICY",
        "DND the user switched themselves (phone key, app): respect = it stands until their Teams "
        "state next changes; enforce = the bridge writes its own DND again",
    )
    starface_select_all: Annotated[bool, BeforeValidator(_bool)] = _setting(
        False, "STARFACE_SELECT_ALL", "Bridge every STARFACE user"
    )
    starface_group: str | None = _setting(
        None, "STARFACE_GROUP", "Bridge the members of this STARFACE group (name or id)"
    )
    starface_extra_logins: Annotated[tuple[str, ...], BeforeValidator(_csv)] = _setting(
        (), "STARFACE_EXTRA_LOGINS", "Comma-separated extra login IDs to bridge"
    )
    starface_directory_refresh_seconds: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        600, "STARFACE_DIRECTORY_REFRESH_SECONDS", "How often the STARFACE user directory is re-read"
    )
    user_match_order: Annotated[tuple[str, ...], BeforeValidator(_match_order)] = _setting(
        USER_MATCH_PROPERTIES,
        "USER_MATCH_ORDER",
        "Entra properties a STARFACE e-mail is matched against, first match wins",
    )
    graph_service_accounts: Annotated[tuple[str, ...], BeforeValidator(_csv)] = _setting(
        (),
        "GRAPH_SERVICE_ACCOUNTS",
        "Comma-separated service accounts (UPNs) that hold presence subscriptions, 650 users each",
    )
    presence_confirm_seconds: Annotated[int, BeforeValidator(_non_negative_int)] = _setting(
        1,
        "PRESENCE_CONFIRM_SECONDS",
        "Seconds after a notification without sequenceNumber to read the user's presence again; 0 = never",
    )
    resync_interval_seconds: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        900,
        "RESYNC_INTERVAL_SECONDS",
        "Interval of full getPresencesByUserId sweeps that repair missed notifications",
    )
    presence_source: Annotated[str, BeforeValidator(_choice("subscriptions", "poll"))] = _setting(
        "subscriptions",
        "PRESENCE_SOURCE",
        "subscriptions = Graph pushes changes to PUBLIC_BASE_URL (service accounts needed); "
        "poll = read every user's presence every POLL_SECONDS, no public endpoint for Graph",
    )
    poll_seconds: Annotated[float, BeforeValidator(_poll_seconds)] = _setting(
        2.0,
        "POLL_SECONDS",
        "Interval of getPresencesByUserId reads: every user in poll mode, the users of a silent "
        "subscription until it delivers again",
    )
    poll_max_users: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        10000,
        "POLL_MAX_USERS",
        "Most users poll mode must cover; checked at start against Graph's 1,500 presence requests per 30 s",
    )
    watch_seconds: Annotated[int, BeforeValidator(_non_negative_int)] = _setting(
        60,
        "WATCH_SECONDS",
        "Interval of reads of every subscribed user's presence that catch changes no notification "
        "delivered; 0 = off",
    )
    missed_grace_seconds: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        60,
        "MISSED_GRACE_SECONDS",
        "A read that differs from the notified state is a missed change when no notification for the "
        "user follows within this time",
    )
    scheduler_lease_seconds: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        30,
        "SCHEDULER_LEASE_SECONDS",
        "Time-to-live of the scheduler lease; a dead leader is replaced within it",
    )
    scheduler_pass_seconds: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        60,
        "SCHEDULER_PASS_SECONDS",
        "Pause between scheduler passes (directory e-mails, shards, renewals, lifecycle events)",
    )
    teams_presence_minutes: Annotated[int, BeforeValidator(_minutes_5_240)] = _setting(
        5,
        "TEAMS_PRESENCE_MINUTES",
        "Lifetime of the Teams presence the bridge sets for a STARFACE call; re-sent before it ends",
    )
    mapping_file: Annotated[str | None, BeforeValidator(_existing_file)] = _setting(
        None,
        "MAPPING_FILE",
        "TOML mapping of Teams states to STARFACE DND and status text; unset = built-in default",
    )

    console_port: Annotated[int | None, BeforeValidator(_port)] = _setting(
        None,
        "CONSOLE_PORT",
        "Port of the admin console, served by `serve` beside (never on) the public port; unset = off",
    )
    console_host: str = _setting(
        "127.0.0.1", "CONSOLE_HOST", "Address the admin console listens on; loopback unless you proxy it"
    )
    console_base_url: Annotated[str | None, BeforeValidator(_http_url)] = _setting(
        None,
        "CONSOLE_BASE_URL",
        "URL operators open the console at; <it>/auth/callback is the Entra redirect URI "
        "(default http://<CONSOLE_HOST>:<CONSOLE_PORT>)",
    )
    console_role: str = _setting(
        "PresenceBridge.Admin",
        "CONSOLE_ROLE",
        "App role (roles claim) that lets a Microsoft sign-in use the console",
    )
    console_group: str | None = _setting(
        None,
        "CONSOLE_GROUP",
        "Entra group object id whose members may use the console too (groups claim)",
    )
    console_admin_user: str | None = _setting(
        None, "CONSOLE_ADMIN_USER", "Local break-glass console user, for when Entra is unreachable"
    )
    console_admin_password_hash: Annotated[SecretStr | None, BeforeValidator(_password_hash)] = _setting(
        None,
        "CONSOLE_ADMIN_PASSWORD_HASH",
        "scrypt hash of the break-glass password: `presence-bridge console hash-password` prints it",
    )
    console_idle_minutes: Annotated[int, BeforeValidator(_positive_int)] = _setting(
        30, "CONSOLE_IDLE_MINUTES", "A console session ends after this many minutes without a request"
    )
    console_enrolment: Annotated[bool, BeforeValidator(_bool)] = _setting(
        False,
        "CONSOLE_ENROLMENT",
        "Let employees store their own STARFACE password at <console>/enrol after a Microsoft sign-in",
    )

    @property
    def partitions(self) -> Partitions:
        """``REDIS_PARTITIONS`` as the object that maps users and logins to their partition."""
        return Partitions(self.redis_partitions)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # ``from_env`` gathers the environment, the .env file and *_FILE secrets itself, so that
        # tests and commands can pass an environment of their own and every problem is named.
        return (init_settings,)

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
        problems: list[str] = []
        given, unreadable = _given(values, problems)
        groups = set(require)
        for spec in FIELDS:
            if spec.env in given or spec.env in unreadable:
                continue
            if spec.group is not None and spec.group in groups:
                problems.append(f"{spec.env} is missing: {spec.help}")
        if (
            STARFACE in groups
            and given.get("STARFACE_AUTH", "legacy") == "oauth"
            and not given.get("STARFACE_OAUTH_CLIENT_SECRET")
        ):
            problems.append("STARFACE_OAUTH_CLIENT_SECRET is missing: needed when STARFACE_AUTH=oauth")
        problems.extend(_console_problems(given))
        settings: Settings | None = None
        try:
            settings = cls.model_validate(given)
        except ValidationError as exc:
            problems.extend(_describe(error) for error in exc.errors())
        if settings is not None:
            problems.extend(_poll_problems(settings))
        if problems:
            raise SettingsError(sorted(problems, key=_schema_order))
        assert settings is not None
        if not settings.openid_metadata_url:
            settings = settings.model_copy(
                update={"openid_metadata_url": _default_metadata(settings.authority_base_url)}
            )
        return settings

    def previous_secret_keys(self) -> tuple[str, ...]:
        """The keys ``BRIDGE_SECRET_KEY`` replaced, which stored values may still be sealed with."""
        raw = reveal(self.secret_key_previous) or ""
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def masked(self) -> dict[str, Any]:
        """All settings with secrets replaced, for ``status`` output and logs."""
        return {
            name: ("***" if isinstance(value, SecretStr) and value.get_secret_value() else value)
            for name, value in ((n, getattr(self, n)) for n in type(self).model_fields)
        }


def _given(values: Mapping[str, str], problems: list[str]) -> tuple[dict[str, str], set[str]]:
    """The non-empty value of every setting, each from NAME or from the file NAME_FILE names, and
    the names whose problem is already told (so it is not told again as missing)."""
    given: dict[str, str] = {}
    told: set[str] = set()
    for spec in FIELDS:
        direct = values.get(spec.env, "").strip()
        path = values.get(f"{spec.env}_FILE", "").strip()
        if direct and path:
            problems.append(f"{spec.env} and {spec.env}_FILE are both set: keep one")
            told.add(spec.env)
            continue
        if path:
            try:
                direct = Path(path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                problems.append(f"{spec.env}_FILE names {path!r}, which cannot be read: {reason}")
                told.add(spec.env)
                continue
        if direct:
            given[spec.env] = direct
    return given, told


def _console_problems(given: Mapping[str, str]) -> list[str]:
    """A console nobody can sign in to, or half a break-glass account, is refused at start."""
    problems: list[str] = []
    user = "CONSOLE_ADMIN_USER" in given
    hashed = "CONSOLE_ADMIN_PASSWORD_HASH" in given
    if user != hashed:
        problems.append("CONSOLE_ADMIN_USER and CONSOLE_ADMIN_PASSWORD_HASH go together: set both or neither")
    if "CONSOLE_PORT" in given and not (user and hashed) and "AZURE_CLIENT_SECRET" not in given:
        problems.append(
            "CONSOLE_PORT is set but nobody can sign in: set AZURE_CLIENT_SECRET (Microsoft sign-in) "
            "or CONSOLE_ADMIN_USER and CONSOLE_ADMIN_PASSWORD_HASH (break-glass account)"
        )
    return problems


# Graph's presence reads: 650 ids per getPresencesByUserId request, 1,500 requests per 30 s per app
# and tenant (docs/protocols.md, "getPresencesByUserId").  Polling may use two thirds of that
# window; the rest stays for setPresence/clearPresence and confirm reads, which share it.
PRESENCE_IDS_PER_READ = 650
PRESENCE_WINDOW_SECONDS = 30
POLL_REQUESTS_PER_WINDOW = 1000


def poll_requests_per_window(users: int, seconds: float) -> float:
    """getPresencesByUserId requests per 30 s that reading ``users`` every ``seconds`` costs."""
    return -(-users // PRESENCE_IDS_PER_READ) * PRESENCE_WINDOW_SECONDS / seconds


def _poll_problems(settings: Settings) -> list[str]:
    """A poll interval Graph's throttling cannot carry for the users configured is refused at start."""
    if settings.presence_source != "poll":
        return []
    cost = poll_requests_per_window(settings.poll_max_users, settings.poll_seconds)
    if cost <= POLL_REQUESTS_PER_WINDOW:
        return []
    users = settings.poll_max_users
    shortest = math.ceil(poll_requests_per_window(users, 1.0) / POLL_REQUESTS_PER_WINDOW * 100)
    return [
        f"POLL_SECONDS ({settings.poll_seconds:g}) is too short for POLL_MAX_USERS ({users}): "
        f"{cost:.0f} getPresencesByUserId requests per 30 s, but polling may use "
        f"{POLL_REQUESTS_PER_WINDOW} of Graph's 1,500; set POLL_SECONDS to at least {shortest / 100:g} "
        f"or lower POLL_MAX_USERS"
    ]


def _schema_order(problem: str) -> int:
    """Problems are listed in the order the schema (and .env.example) declares the settings."""
    name = problem.split(" ", 1)[0].removesuffix("_FILE")
    return next((i for i, spec in enumerate(FIELDS) if spec.env == name), len(FIELDS))


def _describe(error: Any) -> str:
    """One pydantic error as ``NAME what to fix``; the value itself is never repeated (it may be secret)."""
    name = str(error["loc"][0]) if error.get("loc") else "configuration"
    message = str(error.get("msg", "is invalid"))
    return f"{name} {message.removeprefix('Value error, ')}"


@dataclass(frozen=True)
class Field:
    """One setting as documentation and tests see it; derived from the schema, never declared."""

    env: str
    attr: str
    default: Any
    group: str | None
    help: str
    secret: bool


def _fields() -> tuple[Field, ...]:
    result = []
    for attr, info in Settings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        group = extra.get("group")
        result.append(
            Field(
                env=str(info.alias),
                attr=attr,
                default=info.default,
                group=str(group) if group is not None else None,
                help=info.description or "",
                secret="SecretStr" in str(info.annotation),
            )
        )
    return tuple(result)


FIELDS: tuple[Field, ...] = _fields()


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (``#`` comments, quotes, ``export``), as python-dotenv reads them."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and "=" not in stripped:
            raise SettingsError([f"{path}:{number}: expected KEY=VALUE, got {stripped[:40]!r}"])
    return {k: v for k, v in dotenv_values(path).items() if v is not None}
