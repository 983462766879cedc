from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.core.settings import CORE, FIELDS, GRAPH_APP, STARFACE, Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "PUBLIC_BASE_URL": "https://bridge.example.com/",
    "BRIDGE_SECRET_KEY": "k" * 32,
    "AZURE_TENANT_ID": "t",
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
        "# comment\nexport PUBLIC_BASE_URL='https://from-file.example'\nAZURE_TENANT_ID=\"file\"\n"
        f"BRIDGE_SECRET_KEY={'x' * 40}\nAZURE_CLIENT_ID=c\n"
    )
    s = Settings.from_env({"AZURE_TENANT_ID": "env"}, env_file=env_file)
    assert s.public_base_url == "https://from-file.example"
    assert s.tenant_id == "env"
    env_file.write_text("NOT A SETTING LINE\n")
    with pytest.raises(SettingsError, match=r"\.env:1: expected KEY=VALUE"):
        Settings.from_env({}, env_file=env_file)


def test_secrets_are_masked_and_kept_out_of_repr() -> None:
    s = Settings.from_env(dict(GOOD, AZURE_CLIENT_SECRET="hunter2"), env_file=None)
    assert "hunter2" not in repr(s)
    assert "k" * 32 not in repr(s)
    assert s.masked()["client_secret"] == "***"
    assert s.masked()["tenant_id"] == "t"


def test_every_setting_is_in_env_example_and_nothing_else() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    declared = {f.env for f in FIELDS}
    assert listed == declared
    for field in FIELDS:  # each with its comment on the line above
        assert re.search(rf"^# .+\n#?\s*{field.env}=", text, flags=re.M), field.env


def test_every_field_has_a_dataclass_attribute() -> None:
    attrs = set(Settings.__dataclass_fields__)
    assert {f.attr for f in FIELDS} <= attrs
