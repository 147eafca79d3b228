"""Tokens: parsed from the secret, looked up in constant time, never echoed in an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.auth import Principal, Role, TokenTable
from api.errors import ConfigError
from api.settings import ApiSettings, mask_url_password


def test_tokens_map_to_named_principals(tmp_path: Path) -> None:
    secrets = tmp_path / "tokens"
    secrets.write_text("# mounted secret\nfile-token:admin:ops\n\nsecond:viewer\n")
    table = TokenTable.load("s3cret-a:viewer, s3cret-b:Analyst:alice", secrets)
    assert len(table) == 4
    assert table.authenticate("s3cret-a") == Principal("viewer-1", Role.VIEWER)
    assert table.authenticate("s3cret-b") == Principal("alice", Role.ANALYST)
    assert table.authenticate("file-token") == Principal("ops", Role.ADMIN)
    assert table.authenticate("second") == Principal("viewer-2", Role.VIEWER)
    for wrong in ("", "s3cret", "s3cret-a ", "S3CRET-A", "file-token:admin"):
        assert table.authenticate(wrong) is None
    assert "s3cret" not in repr(table)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hunter2", "entry 1 is not token:role"),
        ("ok:viewer,hunter2:root", "entry 2 has role 'root'"),
        (":viewer", "entry 1 is not token:role"),
        ("a:viewer:x,b:admin:x", "repeats the name 'x'"),
        ("a:viewer:x:y", "entry 1 is not token:role"),
    ],
)
def test_bad_token_lists_are_refused_without_quoting_the_secret(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        TokenTable.parse(text)
    assert "hunter2" not in str(caught.value)


def test_a_missing_tokens_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        TokenTable.load("", tmp_path / "absent")


def test_roles_are_ordered() -> None:
    assert Role.VIEWER < Role.ANALYST < Role.ADMIN


def test_public_settings_leave_secrets_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_API_TOKENS", "topsecret:admin")
    monkeypatch.setenv("FRAUD_REDIS_URL", "redis://app:pa55word@redis:6379/2")
    monkeypatch.setenv("FRAUD_API_PORT", "9000")
    settings = ApiSettings()
    public = settings.public()
    assert "api_tokens" not in public and public["api_port"] == 9000
    assert public["redis_url"] == "redis://app:***@redis:6379/2"
    assert "topsecret" not in repr(settings) and "pa55word" not in str(public)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://u:pw@h/0", "rediss://u:***@h/0"),
    ],
)
def test_url_passwords_are_masked(url: str, shown: str) -> None:
    assert mask_url_password(url) == shown
