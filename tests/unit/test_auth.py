"""Authenticator: hashes only, lookup by hash, expiry, open mode, model checks, admin key."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import (
    Authenticator,
    _Entry,
    admin_key_matches,
    api_key_from_headers,
    check_admin_key,
)
from gateway.call import ANONYMOUS
from gateway.errors import AuthError, InvalidRequest, NotFound, PermissionDenied
from gateway.keys import KeyRecord, SqliteKeyStore, generate_key, hash_key, mask_key
from gateway.policy.tenants import TenantConfig, parse_expiry

KEY = "gw-test-key-0123456789abcdefghijklmnopqrstuvwxyz"
OTHER = "gw-other-key-0123456789abcdefghijklmnopqrstuvwxy"


def tenants(**by_name: dict[str, Any]) -> dict[str, TenantConfig]:
    return {n: TenantConfig.model_validate(c) for n, c in by_name.items()}


def acme(**key: Any) -> dict[str, TenantConfig]:
    return tenants(acme={"models": ["gpt-4o", "llama-3-8b"],
                         "keys": [{"id": "ci", "name": "ci-bot", "hash": hash_key(KEY), **key}]},
                   beta={"keys": [{"id": "b1", "hash": hash_key(OTHER)}]})


def test_hash_is_sha256_hex_with_prefix() -> None:
    assert hash_key("abc") == ("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff6"
                               "1f20015ad")


def test_generated_keys_are_gw_and_43_url_safe_characters() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(re.fullmatch(r"gw-[A-Za-z0-9_-]{43}", k) for k in keys)


def test_mask_shows_five_leading_and_two_trailing_characters() -> None:
    assert mask_key("gw-abcdefghijklmnopyz") == "gw-ab***yz"
    assert mask_key("short") == "***"


def test_policy_key_authenticates_to_its_tenant() -> None:
    auth = Authenticator(acme())
    p = auth.authenticate(KEY)
    assert (p.tenant, p.key_id, p.key_name) == ("acme", "ci", "ci-bot")
    assert p.allowed_models == frozenset({"gpt-4o", "llama-3-8b"})
    assert auth.authenticate(OTHER).allowed_models is None


@pytest.mark.parametrize("wrong", [
    "X" + KEY[1:],  # differs at the first character
    KEY[:-1] + "X",  # differs at the last
    KEY[:20],  # a prefix
])
def test_wrong_keys_are_refused_with_a_masked_openai_style_message(wrong: str) -> None:
    with pytest.raises(AuthError) as e:
        Authenticator(acme()).authenticate(wrong)
    assert e.value.status == 401 and e.value.code == "invalid_api_key"
    assert e.value.message.startswith(f"Incorrect API key provided: {mask_key(wrong)}. ")
    assert wrong not in e.value.message


def test_missing_key_says_how_to_send_one() -> None:
    with pytest.raises(AuthError, match="Authorization: Bearer"):
        Authenticator(acme()).authenticate(None)


def test_open_mode_makes_every_caller_anonymous() -> None:
    auth = Authenticator({})
    assert auth.authenticate(None) is ANONYMOUS
    assert auth.authenticate("anything") is ANONYMOUS


def test_expired_policy_key_is_refused_from_its_expiry_on() -> None:
    expiry = parse_expiry("2026-03-31")
    assert expiry == datetime(2026, 4, 1, tzinfo=UTC)  # a date is valid through that day
    now = [expiry.timestamp() - 1]
    auth = Authenticator(acme(expires="2026-03-31"), clock=lambda: now[0])
    assert auth.authenticate(KEY).tenant == "acme"
    now[0] += 1
    with pytest.raises(AuthError, match=r"expired at 2026-04-01T00:00:00Z"):
        auth.authenticate(KEY)


def test_check_model_names_the_allowed_models() -> None:
    auth = Authenticator(acme())
    p = auth.authenticate(KEY)
    auth.check_model(p, "gpt-4o", ["gpt-4o", "gpt-5", "llama-3-8b"])
    with pytest.raises(PermissionDenied) as e:
        auth.check_model(p, "gpt-5", ["gpt-5", "llama-3-8b", "gpt-4o"])
    assert e.value.status == 403
    assert e.value.message == ('Model "gpt-5" is not available to this key. Available: '
                               "gpt-4o, llama-3-8b.")


def test_policy_reload_replaces_keys() -> None:
    auth = Authenticator(acme())
    auth.update_tenants(tenants(beta={"keys": [{"id": "b1", "hash": hash_key(OTHER)}]}))
    with pytest.raises(AuthError):
        auth.authenticate(KEY)
    assert auth.authenticate(OTHER).tenant == "beta"


@pytest.mark.parametrize(("headers", "key"), [
    ({"authorization": "Bearer gw-abc"}, "gw-abc"),
    ({"authorization": "bearer  gw-abc "}, "gw-abc"),
    ({"x-api-key": "gw-abc"}, "gw-abc"),
    ({"authorization": "Basic Zm9v", "x-api-key": "gw-abc"}, "gw-abc"),
    ({}, None),
])
def test_key_comes_from_bearer_or_x_api_key(headers: dict[str, str], key: str | None) -> None:
    assert api_key_from_headers(headers) == key


def test_admin_key_check_is_exact_and_accepts_a_hash() -> None:
    assert admin_key_matches("s3cret", "s3cret")
    assert admin_key_matches("s3cret", hash_key("s3cret"))
    assert not admin_key_matches("s3cre", "s3cret")
    assert not admin_key_matches(None, "s3cret")
    with pytest.raises(PermissionDenied, match="admin API is disabled"):
        check_admin_key("x", None)
    with pytest.raises(AuthError):
        check_admin_key("wrong", "s3cret")
    check_admin_key("s3cret", "s3cret")


def test_policy_refuses_malformed_hashes_and_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="gateway keys hash"):
        TenantConfig.model_validate({"keys": [{"id": "a", "hash": "sk-plaintext"}]})
    with pytest.raises(ValueError, match="unique"):
        TenantConfig.model_validate({"keys": [{"id": "a", "hash": hash_key("1")},
                                              {"id": "a", "hash": hash_key("2")}]})
    with pytest.raises(ValueError, match="ISO date"):
        TenantConfig.model_validate({"keys": [{"id": "a", "hash": hash_key("1"),
                                               "expires": "next week"}]})


@pytest.mark.asyncio
async def test_issued_keys_work_after_create_and_fail_after_revoke(tmp_path: Path) -> None:
    store = SqliteKeyStore(str(tmp_path / "keys.db"))
    auth = Authenticator(acme(), store)
    await auth.start()
    try:
        issued = await auth.create_key("acme", "laptop")
        assert auth.authenticate(issued.key).key_id == issued.record.id
        assert auth.authenticate(issued.key).allowed_models == frozenset({"gpt-4o", "llama-3-8b"})
        await auth.revoke_key(issued.record.id)
        with pytest.raises(AuthError, match="was revoked"):
            auth.authenticate(issued.key)
        with pytest.raises(NotFound, match='Unknown tenant "nope"'):
            await auth.create_key("nope")
        with pytest.raises(InvalidRequest, match="declared in the policy"):
            await auth.revoke_key("ci")
        listed = {r.id: r.public() for r in await auth.list_keys("acme")}
        assert listed["ci"]["source"] == "policy"
        assert listed[issued.record.id]["revoked_at"] is not None
        assert all("hash" not in r for r in listed.values())
    finally:
        await auth.close()
        await store.close()


@pytest.mark.asyncio
async def test_issued_key_expires(tmp_path: Path) -> None:
    store = SqliteKeyStore(str(tmp_path / "keys.db"))
    expires = datetime.now(UTC) + timedelta(days=1)
    now = [expires.timestamp() - 10]
    auth = Authenticator(acme(), store, clock=lambda: now[0])
    await auth.start()
    try:
        issued = await auth.create_key("acme", expires=expires)
        auth.authenticate(issued.key)
        now[0] = expires.timestamp()
        with pytest.raises(AuthError, match="expired"):
            auth.authenticate(issued.key)
    finally:
        await auth.close()
        await store.close()


def _record(i: int, tenant: str = "acme", revoked: bool = False) -> KeyRecord:
    now = datetime.now(UTC)
    return KeyRecord(f"k{i}", tenant, None, None, now, None, now if revoked else None,
                     revision=i + 1, hash=hash_key(f"gw-key-{i}"))


def test_changes_one_by_one_index_what_one_batch_indexes() -> None:
    # The first load rebuilds the index; later changes touch only their keys. Both must
    # give the same index, revocations, unknown tenants and policy keys included.
    records = [_record(i, tenant=("acme", "beta", "gone")[i % 3]) for i in range(100)]
    changes = [*records, _record(5, revoked=True), _record(7, tenant="gone"),
               _record(8, revoked=True)]
    batch, single = Authenticator(acme()), Authenticator(acme())
    batch._apply(changes)
    for r in changes:
        single._apply([r])
    assert batch._entries == single._entries
    assert batch._revoked == single._revoked
    with pytest.raises(AuthError, match="was revoked"):
        single.authenticate("gw-key-5")
    assert single.authenticate("gw-key-6").tenant == "acme"
    assert single.authenticate(KEY).key_id == "ci"


def test_a_revocation_message_drops_the_key_at_once() -> None:
    auth = Authenticator(acme())
    auth._apply([_record(i) for i in range(3)])
    auth._on_message(b"revoke:k1")
    with pytest.raises(AuthError, match="was revoked"):
        auth.authenticate("gw-key-1")
    assert auth.authenticate("gw-key-2").key_id == "k2"
    auth._on_message(b"revoke:ci")  # a policy key is not revoked by a message
    assert auth.authenticate(KEY).key_id == "ci"


def test_a_store_keys_entry_is_made_on_first_use_as_the_policy_makes_one() -> None:
    # At a load, store keys wait as records; the first use makes the entry, the same entry
    # the index would hold had it been made at once, and keeps it.
    expires = datetime.now(UTC) + timedelta(days=1)
    records = [_record(i) for i in range(100)]
    records[3] = records[3]._replace(name="laptop", expires_at=expires)
    auth = Authenticator(acme())
    auth._apply(records)
    assert all(auth._entries[r.hash] is r for r in records)
    p = auth.authenticate("gw-key-3")
    assert (p.tenant, p.key_id, p.key_name) == ("acme", "k3", "laptop")
    assert p.allowed_models == frozenset({"gpt-4o", "llama-3-8b"})
    entry = auth._entries[records[3].hash]
    assert entry == _Entry(records[3].hash, p, expires.timestamp())
    assert entry == auth._store_entry(records[3])
    assert auth.authenticate("gw-key-3") is p  # made once
    assert auth.authenticate_hash(hash_key("gw-key-4")).key_id == "k4"
    with pytest.raises(AuthError, match="Incorrect API key"):
        auth.authenticate("gw-key-100")
    # Revoking a key used before and one never used, by the store's change or by a message.
    auth._apply([_record(3, revoked=True)])
    auth._on_message(b"revoke:k5")
    auth._on_message(b"revoke:k4")
    for i in (3, 4, 5):
        with pytest.raises(AuthError, match="was revoked"):
            auth.authenticate(f"gw-key-{i}")
        with pytest.raises(AuthError, match="no longer valid"):
            auth.authenticate_hash(hash_key(f"gw-key-{i}"))
    # A reload makes the entries anew, with the new policy's models.
    assert auth.authenticate("gw-key-6").allowed_models == frozenset({"gpt-4o", "llama-3-8b"})
    auth.update_tenants(tenants(acme={"models": ["gpt-4o"]}))
    assert auth._entries[records[6].hash] is records[6]
    assert auth.authenticate("gw-key-6").allowed_models == frozenset({"gpt-4o"})
    with pytest.raises(AuthError, match="was revoked"):
        auth.authenticate("gw-key-3")


@pytest.mark.asyncio
async def test_store_records_read_back_equal_the_issued_ones(tmp_path: Path) -> None:
    store = SqliteKeyStore(str(tmp_path / "keys.db"))
    try:
        issued = [await store.create("acme", "laptop",
                                     expires=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
                  await store.create("acme"), await store.create("beta")]
        _, loaded = await store.changes_since(0)
        assert loaded == [i.record for i in issued]
        assert await store.list() == [i.record for i in issued]
        assert loaded[0].tenant is loaded[1].tenant  # one string per tenant name
        revoked = await store.revoke(issued[1].record.id)
        assert revoked.revoked_at is not None and revoked.revision == 4
        assert revoked == issued[1].record._replace(revoked_at=revoked.revoked_at, revision=4)
        assert (await store.changes_since(3)) == (4, [revoked])
        with pytest.raises(AttributeError):
            revoked.tenant = "beta"  # type: ignore[misc]
    finally:
        await store.close()
