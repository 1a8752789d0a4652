"""API key masking, key parsing and Retry-After, without Redis."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from services.common.keypool import (
    ApiKey,
    NoKeyAvailable,
    RedisKeyPool,
    keys_from_env,
    keys_from_file,
)
from services.common.redis import KeySpace
from services.common.retry_after import retry_after_seconds

SECRET = "hf_fake-AbCdEfGhIjKlMnOpQrStUvWxYz-0123456789a1b2"


def test_api_key_never_shows_its_secret():
    key = ApiKey("hf", SECRET)

    assert key.get_secret_value() == SECRET
    assert key.masked == "hf_…a1b2"
    assert key.key_id.startswith("hf:") and len(key.key_id) == len("hf:") + 8
    for shown in (repr(key), str(key), f"{key}", key.key_id, key.masked, repr([key]), repr({"k": key})):
        assert SECRET not in shown
        assert SECRET[3:-4] not in shown


def test_key_id_is_a_stable_fingerprint_and_keys_compare_by_it():
    assert ApiKey("hf", SECRET).key_id == ApiKey("hf", SecretStr(f"  {SECRET}\n")).key_id
    assert ApiKey("hf", SECRET) == ApiKey("hf", SECRET)
    assert len({ApiKey("hf", SECRET), ApiKey("hf", SECRET)}) == 1
    assert ApiKey("hf", SECRET).key_id != ApiKey("hf", SECRET + "x").key_id
    assert ApiKey("hf", SECRET).key_id != ApiKey("replicate", SECRET).key_id


@pytest.mark.parametrize("secret, masked", [("short-key", "…"), ("mediumkey123", "…23")])
def test_short_keys_show_less(secret, masked):
    key = ApiKey("p", secret)
    assert key.masked == masked
    assert secret not in repr(key)


@pytest.mark.parametrize("bad", ["", "   ", "has space-inside-0123456789"])
def test_a_malformed_key_is_refused_without_echoing_it(bad):
    with pytest.raises(ValueError) as raised:
        ApiKey("hf", bad)
    if bad.strip():
        assert bad not in str(raised.value)
        assert "space-inside" not in str(raised.value)


def test_pool_errors_never_carry_a_secret():
    other = ApiKey("replicate", "r8_" + "z" * 37)
    with pytest.raises(ValueError) as raised:
        RedisKeyPool(Redis(), KeySpace("t:"), "hf", [ApiKey("hf", SECRET), other])  # no connection is made
    assert other.key_id in str(raised.value)
    assert other.get_secret_value() not in str(raised.value)

    exc = NoKeyAvailable("hf", 12.34)
    assert "12.3" in str(exc) and exc.retry_after_s == 12.34
    assert pickle.loads(pickle.dumps(exc)).retry_after_s == 12.34
    assert "forgeline keys enable hf" in str(NoKeyAvailable("hf", None))


def test_keys_from_env_splits_on_commas_and_newlines_and_drops_duplicates():
    a, b, c = ("hf_" + ch * 30 for ch in "abc")
    keys = keys_from_env(f" {a},{b}\n\n{c} , {a},", "hf")

    assert [k.get_secret_value() for k in keys] == [a, b, c]
    assert {k.provider for k in keys} == {"hf"}
    assert keys_from_env(SecretStr(a), "hf") == [ApiKey("hf", a)]
    assert keys_from_env("", "hf") == keys_from_env(None, "hf") == []


def test_keys_from_file_skips_comments_and_blank_lines(tmp_path):
    a, b = ("r8_" + ch * 37 for ch in "ab")
    path = tmp_path / "replicate-keys"
    path.write_text(f"# team account\n{a}\r\n\n   # old key below was revoked\n  {b}  \n", encoding="utf-8")

    assert [k.get_secret_value() for k in keys_from_file(path, "replicate")] == [a, b]
    assert keys_from_file(str(path), "replicate")[0].key_id.startswith("replicate:")


@pytest.mark.parametrize("header, expected", [("30", 30.0), (" 0 ", 0.0), ("1.5", 1.5), ("120", 120.0)])
def test_retry_after_delta_seconds(header, expected):
    assert retry_after_seconds(header, now=1_000.0) == expected


def test_retry_after_http_date():
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    later = datetime(2025, 1, 2, 3, 5, 0, tzinfo=UTC)

    assert retry_after_seconds(format_datetime(later, usegmt=True), now=now) == pytest.approx(55.0)
    assert retry_after_seconds("Thu, 02 Jan 2025 03:05:00 -0000", now=now) == pytest.approx(55.0)
    # A date already past means "now", not a negative wait.
    assert retry_after_seconds("Wed, 01 Jan 2025 00:00:00 GMT", now=now) == 0.0


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "1e9", "inf", "NaN", "Mon, 99 Foo 2025", "30s"])
def test_retry_after_garbage_is_none(header):
    assert retry_after_seconds(header, now=1_000.0) is None
