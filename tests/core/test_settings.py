from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.core.settings import CORE, FIELDS, GRAPH_APP, STARFACE, Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "PUBLIC_BASE_URL": "https://bridge.example.com/",
    "BRIDGE_SECRET_KEY": "k" * 32,
    "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "AZURE_CLIENT_ID": "c",
}


def test_every_missing_key_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({}, env_file=None, require=[CORE, GRAPH_APP, STARFACE])
    text = str(caught.value)
    for name in (
        "PUBLIC_BASE_URL",
        "BRIDGE_SECRET_KEY",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "STARFACE_BASE_URL",
        "STARFACE_ADMIN_LOGIN",
        "STARFACE_ADMIN_PASSWORD",
    ):
        assert name in text
    assert len(caught.value.problems) == 8


def test_invalid_values_are_named_with_what_to_fix() -> None:
    env = dict(
        GOOD,
        PUBLIC_BASE_URL="http://bridge",
        BRIDGE_SECRET_KEY="short",
        REDIS_URL="mysql://x",
        WORKER_BATCH="0",
        STARFACE_SELECT_ALL="maybe",
        LOG_LEVEL="LOUD",
        STARFACE_UCI_NAMESPACE="30",
    )
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env, env_file=None)
    problems = "\n".join(caught.value.problems)
    assert "PUBLIC_BASE_URL must be an https:// URL" in problems
    assert "BRIDGE_SECRET_KEY must be at least 32 characters" in problems
    assert "token_urlsafe" in problems
    assert "REDIS_URL must start with redis://" in problems
    assert "WORKER_BATCH must be a positive whole number" in problems
    assert "STARFACE_SELECT_ALL must be true or false" in problems
    assert "LOG_LEVEL must be one of" in problems
    assert "STARFACE_UCI_NAMESPACE must look like v30" in problems
    assert len(caught.value.problems) == 7


def test_values_are_typed_and_normalised() -> None:
    s = Settings.from_env(
        dict(GOOD, WORKER_BATCH="7", STARFACE_EXTRA_LOGINS=" 0001, 0002 ,,", STARFACE_SELECT_ALL="yes"),
        env_file=None,
    )
    assert s.public_base_url == "https://bridge.example.com"
    assert s.worker_batch == 7
    assert s.starface_extra_logins == ("0001", "0002")
    assert s.starface_select_all is True
    assert s.redis_url is None
    assert (
        s.openid_metadata_url
        == "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration"
    )


def test_oauth_needs_its_client_secret() -> None:
    env = dict(
        GOOD,
        STARFACE_BASE_URL="https://pbx",
        STARFACE_ADMIN_LOGIN="0001",
        STARFACE_ADMIN_PASSWORD="p",
        STARFACE_AUTH="oauth",
    )
    with pytest.raises(SettingsError, match="STARFACE_OAUTH_CLIENT_SECRET"):
        Settings.from_env(env, env_file=None, require=[CORE, STARFACE])


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\nexport PUBLIC_BASE_URL='https://from-file.example'\nAZURE_TENANT_ID=\"00000000-0000-0000-0000-00000000f11e\"\n"
        f"BRIDGE_SECRET_KEY={'x' * 40}\nAZURE_CLIENT_ID=c\n"
    )
    s = Settings.from_env({"AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000e1f"}, env_file=env_file)
    assert s.public_base_url == "https://from-file.example"
    assert s.tenant_id == "00000000-0000-0000-0000-000000000e1f"
    env_file.write_text("NOT A SETTING LINE\n")
    with pytest.raises(SettingsError, match=r"\.env:1: expected KEY=VALUE"):
        Settings.from_env({}, env_file=env_file)


def test_secrets_are_masked_and_kept_out_of_repr() -> None:
    s = Settings.from_env(dict(GOOD, AZURE_CLIENT_SECRET="hunter2"), env_file=None)
    assert "hunter2" not in repr(s)
    assert "k" * 32 not in repr(s)
    assert s.masked()["client_secret"] == "***"
    assert s.masked()["tenant_id"] == "11111111-2222-3333-4444-555555555555"


def test_every_setting_is_in_env_example_and_nothing_else() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    declared = {f.env for f in FIELDS}
    assert listed == declared
    for field in FIELDS:  # each with its comment on the line above
        assert re.search(rf"^# .+\n#?\s*{field.env}=", text, flags=re.M), field.env


def test_every_field_has_a_schema_attribute() -> None:
    attrs = set(Settings.model_fields)
    assert {f.attr for f in FIELDS} == attrs


def test_a_setting_can_come_from_a_secret_file(tmp_path: Path) -> None:
    key_file = tmp_path / "bridge-secret-key"
    key_file.write_text("f" * 40 + "\n")  # as `kubectl create secret` or Docker writes it
    env = {k: v for k, v in GOOD.items() if k != "BRIDGE_SECRET_KEY"}
    s = Settings.from_env(dict(env, BRIDGE_SECRET_KEY_FILE=str(key_file)), env_file=None)
    assert s.secret_key.get_secret_value() == "f" * 40
    assert "f" * 40 not in repr(s)


def test_a_setting_given_directly_and_as_a_file_is_refused_naming_both(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("f" * 40)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(dict(GOOD, BRIDGE_SECRET_KEY_FILE=str(tmp_path / "key")), env_file=None)
    assert caught.value.problems == ["BRIDGE_SECRET_KEY and BRIDGE_SECRET_KEY_FILE are both set: keep one"]


def test_an_unreadable_secret_file_is_named_with_its_key(tmp_path: Path) -> None:
    env = {k: v for k, v in GOOD.items() if k != "AZURE_CLIENT_ID"}
    missing = tmp_path / "nope"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            dict(env, AZURE_CLIENT_ID_FILE=str(missing), AZURE_CLIENT_SECRET_FILE=str(tmp_path)),
            env_file=None,
            require=[CORE, GRAPH_APP],
        )
    problems = caught.value.problems
    assert (
        f"AZURE_CLIENT_ID_FILE names '{missing}', which cannot be read: No such file or directory" in problems
    )
    assert any(p.startswith("AZURE_CLIENT_SECRET_FILE names") for p in problems)
    # An unreadable file does not also count as a missing setting: one problem per key.
    assert not any(p.startswith("AZURE_CLIENT_ID is missing") for p in problems)


def test_secrets_are_secret_types_and_never_in_errors() -> None:
    secrets = {f.env for f in FIELDS if f.secret}
    assert secrets == {
        "BRIDGE_SECRET_KEY",
        "BRIDGE_SECRET_KEY_PREVIOUS",
        "AZURE_CLIENT_SECRET",
        "STARFACE_ADMIN_PASSWORD",
        "STARFACE_OAUTH_CLIENT_SECRET",
        "CONSOLE_ADMIN_PASSWORD_HASH",
    }
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(dict(GOOD, BRIDGE_SECRET_KEY="tooshort-but-secret"), env_file=None)
    assert "tooshort-but-secret" not in str(caught.value)


def test_previous_secret_keys_are_listed_and_each_must_be_long_enough() -> None:
    s = Settings.from_env(dict(GOOD, BRIDGE_SECRET_KEY_PREVIOUS=f"{'a' * 32}, {'b' * 40}"), env_file=None)
    assert s.previous_secret_keys() == ("a" * 32, "b" * 40)
    assert Settings.from_env(GOOD, env_file=None).previous_secret_keys() == ()
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(dict(GOOD, BRIDGE_SECRET_KEY_PREVIOUS=f"{'a' * 32},short"), env_file=None)
    assert caught.value.problems[0].startswith("BRIDGE_SECRET_KEY_PREVIOUS must be comma-separated")


def test_the_tenant_must_be_a_guid_and_is_kept_lower_case() -> None:
    upper = Settings.from_env(
        dict(GOOD, AZURE_TENANT_ID="72F988BF-86F1-41AF-91AB-2D7CD011DB47"), env_file=None
    )
    assert upper.tenant_id == "72f988bf-86f1-41af-91ab-2d7cd011db47"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(dict(GOOD, AZURE_TENANT_ID="contoso.onmicrosoft.com"), env_file=None)
    (problem,) = caught.value.problems
    assert problem.startswith("AZURE_TENANT_ID must be the directory (tenant) ID, a GUID")
    assert "Tenant ID" in problem


def test_the_user_match_order_names_known_properties_once_each() -> None:
    s = Settings.from_env(dict(GOOD, USER_MATCH_ORDER="userPrincipalName, mail"), env_file=None)
    assert s.user_match_order == ("userPrincipalName", "mail")
    for bad in ("mail,mail", "email", ","):
        with pytest.raises(SettingsError, match="USER_MATCH_ORDER must be a comma-separated order"):
            Settings.from_env(dict(GOOD, USER_MATCH_ORDER=bad), env_file=None)


def test_a_console_nobody_can_sign_in_to_is_refused() -> None:
    env = {k: v for k, v in GOOD.items() if k != "AZURE_CLIENT_SECRET"}
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(dict(env, CONSOLE_PORT="8081", CONSOLE_ADMIN_USER="rescue"), env_file=None)
    problems = caught.value.problems
    together = "CONSOLE_ADMIN_USER and CONSOLE_ADMIN_PASSWORD_HASH go together"
    assert any(p.startswith(together) for p in problems)
    assert any(p.startswith("CONSOLE_PORT is set but nobody can sign in") for p in problems)


def test_console_port_and_password_hash_are_checked() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            dict(GOOD, CONSOLE_PORT="99999", CONSOLE_ADMIN_USER="r", CONSOLE_ADMIN_PASSWORD_HASH="hunter2"),
            env_file=None,
        )
    problems = caught.value.problems
    assert "CONSOLE_PORT must be a port number from 1 to 65535" in problems
    assert any(p.startswith("CONSOLE_ADMIN_PASSWORD_HASH must be a hash printed by") for p in problems)
    assert not any("hunter2" in p for p in problems)


def test_read_back_settings_and_their_bad_values_are_named() -> None:
    settings = Settings.from_env(GOOD, env_file=None)
    assert (
        settings.starface_read_back,
        settings.starface_rewrites_per_hour,
        settings.starface_dnd_policy,
    ) == (
        True,
        6,
        "respect",
    )
    env = dict(
        GOOD, STARFACE_DND_POLICY="ignore", STARFACE_REWRITES_PER_HOUR="-1", STARFACE_READ_BACK="often"
    )
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env, env_file=None)
    problems = "\n".join(caught.value.problems)
    assert "STARFACE_DND_POLICY must be one of respect, enforce" in problems
    assert "STARFACE_REWRITES_PER_HOUR must be 0 or a positive whole number" in problems
    assert "STARFACE_READ_BACK must be true or false" in problems
    never = Settings.from_env(
        dict(GOOD, STARFACE_REWRITES_PER_HOUR="0", STARFACE_DND_POLICY="enforce"), env_file=None
    )
    assert (never.starface_rewrites_per_hour, never.starface_dnd_policy) == (0, "enforce")


def test_poll_mode_refuses_an_interval_graph_throttling_cannot_carry() -> None:
    # 20,000 users are 31 getPresencesByUserId requests a round; every second that is 930 per 30 s,
    # within the 1,000 polling may use of Graph's 1,500; every half second it is 1,860.
    fine = Settings.from_env(
        dict(GOOD, PRESENCE_SOURCE="poll", POLL_SECONDS="1", POLL_MAX_USERS="20000"), env_file=None
    )
    assert (fine.presence_source, fine.poll_seconds, fine.poll_max_users) == ("poll", 1.0, 20000)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            dict(GOOD, PRESENCE_SOURCE="poll", POLL_SECONDS="0.5", POLL_MAX_USERS="20000"), env_file=None
        )
    assert caught.value.problems == [
        "POLL_SECONDS (0.5) is too short for POLL_MAX_USERS (20000): 1860 getPresencesByUserId requests "
        "per 30 s, but polling may use 1000 of Graph's 1,500; set POLL_SECONDS to at least 0.93 "
        "or lower POLL_MAX_USERS"
    ]
    # Subscription mode polls only silent shards: the same numbers are no reason to refuse it.
    assert Settings.from_env(dict(GOOD, POLL_SECONDS="0.5", POLL_MAX_USERS="20000"), env_file=None)


def test_presence_source_and_poll_seconds_are_checked_by_name() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(dict(GOOD, PRESENCE_SOURCE="push", POLL_SECONDS="0.1"), env_file=None)
    assert caught.value.problems == [
        "PRESENCE_SOURCE must be one of subscriptions, poll",
        "POLL_SECONDS must be a number of seconds from 0.5 to 3600",
    ]
    assert Settings.from_env(GOOD, env_file=None).presence_source == "subscriptions"
