"""API-key handling and the access rules of a `Principal`."""

import stat
from pathlib import Path

import pytest

from app.errors import ForbiddenError, NotFoundError
from app.services.auth import (
    ADMIN_KEY_PREFIX,
    USER_KEY_PREFIX,
    Principal,
    Role,
    generate_user_key,
    hash_api_key,
    load_or_create_admin_key,
)

ADMIN = Principal(role=Role.ADMIN)
ALICE = Principal(role=Role.USER, user_id="alice-id")


# ------------------------------------------------------------------ the admin key


def test_configured_key_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "data" / "admin_key"

    assert load_or_create_admin_key("configured-key", key_file) == "configured-key"

    assert not key_file.exists(), "a configured key must not be written anywhere"
    assert capsys.readouterr().out == ""


def test_configured_key_wins_over_a_stored_one(tmp_path: Path) -> None:
    key_file = tmp_path / "admin_key"
    stored = load_or_create_admin_key(None, key_file)

    assert load_or_create_admin_key("configured-key", key_file) == "configured-key"
    assert key_file.read_text().strip() == stored, "the stored key is left as it is"


def test_generated_key_is_stored_private_and_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "data" / "nested" / "admin_key"

    first = load_or_create_admin_key(None, key_file)
    first_output = capsys.readouterr().out
    second = load_or_create_admin_key(None, key_file)
    second_output = capsys.readouterr().out

    assert first.startswith(ADMIN_KEY_PREFIX)
    assert len(first) >= len(ADMIN_KEY_PREFIX) + 40
    assert second == first
    assert key_file.read_text() == first + "\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first_output.count(first) == 1, "printed exactly once, on generation"
    assert str(key_file) in first_output
    assert second_output == ""


def test_empty_configured_key_counts_as_unset(tmp_path: Path) -> None:
    key_file = tmp_path / "admin_key"

    key = load_or_create_admin_key("", key_file)

    assert key.startswith(ADMIN_KEY_PREFIX)
    assert key_file.read_text().strip() == key


def test_generated_keys_differ_between_data_dirs(tmp_path: Path) -> None:
    one = load_or_create_admin_key(None, tmp_path / "one" / "admin_key")
    two = load_or_create_admin_key(None, tmp_path / "two" / "admin_key")
    assert one != two


# ------------------------------------------------------------------ user keys


def test_hash_api_key_is_deterministic_and_hides_the_key() -> None:
    key = generate_user_key()

    digest = hash_api_key(key)

    assert digest == hash_api_key(key)
    assert digest != key
    assert key not in digest
    assert len(digest) == 64
    int(digest, 16)
    assert hash_api_key(key + "x") != digest
    assert hash_api_key("pqm-a") != hash_api_key("pqm-b")


def test_generated_user_keys_are_random_tokens() -> None:
    keys = {generate_user_key() for _ in range(50)}

    assert len(keys) == 50
    for key in keys:
        assert key.startswith(USER_KEY_PREFIX)
        assert not key.startswith(ADMIN_KEY_PREFIX)
        assert len(key) >= len(USER_KEY_PREFIX) + 40


# ------------------------------------------------------------------ principals


def test_admin_may_access_everyone() -> None:
    assert ADMIN.is_admin
    ADMIN.require_admin()
    ADMIN.require_access_to("alice-id")
    ADMIN.require_access_to("bob-id")


def test_user_may_access_itself_only() -> None:
    assert not ALICE.is_admin
    ALICE.require_access_to("alice-id")

    with pytest.raises(NotFoundError) as caught:
        ALICE.require_access_to("bob-id")
    assert caught.value.status_code == 404
    assert caught.value.param == "user_id"
    assert "bob-id" in caught.value.message


def test_user_without_id_may_access_no_one() -> None:
    anonymous = Principal(role=Role.USER)
    with pytest.raises(NotFoundError):
        anonymous.require_access_to("alice-id")


def test_require_admin_refuses_users() -> None:
    with pytest.raises(ForbiddenError) as caught:
        ALICE.require_admin()
    assert caught.value.status_code == 403
