"""Key → Principal, with no I/O on the request path.

The Authenticator holds every usable key as `hash → Principal` in memory: policy keys, plus
keys issued into the database (a store key's Principal is made the first time the key is
used, from its record: 100,000 keys at start-up cost one dict of records, not 100,000
Principals). A background task asks the store for changes every `refresh_s` (≤ 1 s, one
single-row read when nothing changed), so a key revoked or issued on any replica is seen
everywhere within a second. With Redis configured, a revocation is also published on
`<prefix>keys:changed` and every replica drops the key as the message arrives.

Lookup is by the key's SHA-256, so time spent does not depend on where a wrong key differs
from a right one; the stored hash is then compared with `hmac.compare_digest` as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple

from gateway.call import ANONYMOUS, Principal
from gateway.errors import AuthError, InvalidRequest, NotFound, PermissionDenied
from gateway.keys import IssuedKey, KeyRecord, KeyStore, hash_key, mask_key, open_key_store
from gateway.policy.load import paused_cycle_collection
from gateway.policy.models import Policy
from gateway.policy.tenants import TenantConfig, parse_expiry

log = logging.getLogger("gateway.auth")

_DUMMY = hash_key("")
_MISSING = ("You didn't provide an API key. Send it as `Authorization: Bearer KEY` or in the "
            "`x-api-key` header.")


def api_key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer KEY` or `x-api-key: KEY` (lower-case names, as
    ASGI and Starlette's Headers give them)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return headers.get("x-api-key") or None


def admin_key_matches(presented: str | None, configured: str | None) -> bool:
    """Constant-time check of the admin key (`server.admin_key`, plain or `sha256:<hex>`)."""
    if not presented or not configured:
        return False
    want = configured if configured.startswith("sha256:") else hash_key(configured)
    return hmac.compare_digest(hash_key(presented), want)


def check_admin_key(presented: str | None, configured: str | None) -> None:
    """Raises unless `presented` is the admin key; the admin API calls it first."""
    if not configured:
        raise PermissionDenied("The admin API is disabled: set server.admin_key in the policy "
                               "(as ${GATEWAY_ADMIN_KEY}).", code="admin_disabled")
    if not admin_key_matches(presented, configured):
        raise AuthError("Incorrect admin key provided." if presented else _MISSING)


class _Entry(NamedTuple):
    """A tuple: one per policy key at every (re)load, one per store key on its first use;
    a frozen dataclass costs five times as much to make."""

    hash: str
    principal: Principal
    expires_at: float | None  # epoch seconds


class Authenticator:
    """Authenticates callers; also the admin API's way to issue and revoke keys."""

    def __init__(self, tenants: Mapping[str, TenantConfig], store: KeyStore | None = None, *,
                 redis_url: str | None = None, key_prefix: str = "gw:",
                 refresh_s: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        if not 0 < refresh_s <= 1:
            raise ValueError("refresh_s must be in (0, 1]: revocations must land within 1 s")
        self._store = store
        self._redis_url = redis_url
        self._channel = key_channel(key_prefix)
        self._refresh_s = refresh_s
        self._clock = clock
        self._records: dict[str, KeyRecord] = {}  # store keys by id, revoked ones included
        # The index, by hash: every usable key's `_Entry`, or for a store key not used since
        # the index was built its record, which the first use replaces (in place: the dict
        # does not grow) with the `_Entry` made from it. Revoked keys apart, for the message.
        self._entries: dict[str, _Entry | KeyRecord] = {}
        self._revoked: dict[str, KeyRecord] = {}
        self._revision = 0
        self._loaded = False
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._last_error_log = 0.0
        self.refresh_errors = 0
        """Failed refreshes from the store (the lead's metrics)."""
        self.update_tenants(tenants)

    @classmethod
    def from_policy(cls, policy: Policy, store: KeyStore | None = None) -> Authenticator:
        """Keys from the policy, and from the ledger database unless in open mode."""
        if store is None and policy.tenants:
            store = open_key_store(policy.ledger.url, schema=policy.ledger.schema_name)
        return cls(policy.tenants, store, redis_url=policy.state.redis_url,
                   key_prefix=policy.state.key_prefix)

    def set_policy(self, policy: Policy) -> None:
        self.update_tenants(policy.tenants)

    # -- the index -------------------------------------------------------------------------

    def update_tenants(self, tenants: Mapping[str, TenantConfig]) -> None:
        """Policy reload: rebuild the index (one reference swap)."""
        with paused_cycle_collection():
            self._tenants = dict(tenants)
            self._open = not self._tenants
            # One set of allowed models per tenant, shared by its keys' principals.
            self._models = {name: None if t.models is None else frozenset(t.models)
                            for name, t in self._tenants.items()}
            self._policy_entries: dict[str, _Entry] = {}
            for name, t in self._tenants.items():
                for k in t.keys:
                    expires = parse_expiry(k.expires).timestamp() if k.expires else None
                    self._policy_entries[k.hash] = _Entry(
                        k.hash, self._principal(name, k.id, k.name), expires)
            self._rebuild()

    def _principal(self, tenant: str, key_id: str, name: str | None) -> Principal:
        return Principal(tenant, key_id, self._models[tenant], name)

    def _store_entry(self, r: KeyRecord) -> _Entry:
        expires = r.expires_at.timestamp() if r.expires_at else None
        return _Entry(r.hash, self._principal(r.tenant, r.id, r.name), expires)

    def _rebuild(self) -> None:
        tenants = self._tenants
        revoked = {r.hash: r for r in self._records.values() if r.revoked_at is not None}
        entries: dict[str, _Entry | KeyRecord] = {
            r.hash: r for r in self._records.values()
            if r.revoked_at is None and r.tenant in tenants}
        entries.update(self._policy_entries)  # a policy key wins over a store key's hash
        self._entries, self._revoked = entries, revoked

    def _first_use(self, digest: str, found: _Entry | KeyRecord | None) -> _Entry | None:
        """The entry for what `_entries` holds for `digest` when it is not an `_Entry`:
        nothing (None), or a store key's record, whose entry is made now and kept in its
        place. `authenticate` calls it on a miss or a store key's first use only."""
        if found is None or isinstance(found, _Entry):
            return found
        entry = self._entries[digest] = self._store_entry(found)
        return entry

    def _apply(self, records: Iterable[KeyRecord]) -> None:
        """Store changes: the whole index anew for a large batch (the first load), else only
        the changed keys, so that issuing one key among 100,000 does not rebuild them all."""
        batch = list(records)
        if len(batch) > 64:
            with paused_cycle_collection():
                by_id = self._records
                for r in batch:
                    by_id[r.id] = r
                self._rebuild()
            return
        for r in batch:
            self._records[r.id] = r
            if r.hash in self._policy_entries:
                continue  # a policy key wins over a store key with the same hash
            if r.revoked_at is not None:
                self._entries.pop(r.hash, None)
                self._revoked[r.hash] = r
            elif r.tenant in self._tenants:
                self._entries[r.hash] = r  # its entry is made on first use
                self._revoked.pop(r.hash, None)
            else:
                self._entries.pop(r.hash, None)

    # -- the request path ------------------------------------------------------------------

    def authenticate(self, api_key: str | None) -> Principal:
        """The caller's Principal, or AuthError (401). No I/O."""
        if self._open:
            return ANONYMOUS
        if not api_key:
            raise AuthError(_MISSING)
        digest = hash_key(api_key)
        entry = self._entries.get(digest)
        if type(entry) is not _Entry:  # None, or a store key's first use
            entry = self._first_use(digest, entry)
        # Compare even on a miss, so a hit and a miss do the same work.
        if entry is None or not hmac.compare_digest(entry.hash, digest):
            hmac.compare_digest(digest, _DUMMY)
            revoked = self._revoked.get(digest)
            if revoked is not None:
                raise AuthError(f"API key {mask_key(api_key)} was revoked. Ask your gateway "
                                "admin for a new one.")
            raise AuthError(f"Incorrect API key provided: {mask_key(api_key)}. Check the key, "
                            "or ask your gateway admin for one.")
        if entry.expires_at is not None and self._clock() >= entry.expires_at:
            when = datetime.fromtimestamp(entry.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise AuthError(f"API key {mask_key(api_key)} expired at {when}. Ask your gateway "
                            "admin for a new one.")
        return entry.principal

    def authenticate_hash(self, digest: str) -> Principal:
        """The Principal of the key whose `hash_key` is `digest`, checked as `authenticate`
        checks the key itself (unknown, revoked, expired → AuthError). A console session holds
        the hash, never the key, and calls this on every request: a revoked key's session ends
        as soon as the key does. No I/O."""
        entry = None if self._open else self._entries.get(digest)
        if type(entry) is not _Entry:
            entry = self._first_use(digest, entry)
        if entry is None or not hmac.compare_digest(entry.hash, digest) or (
                entry.expires_at is not None and self._clock() >= entry.expires_at):
            raise AuthError("The key this session signed in with is no longer valid (revoked "
                            "or expired). Sign in again.")
        return entry.principal

    def check_model(self, principal: Principal, model: str, available: Iterable[str]) -> None:
        """PermissionDenied (403) naming the allowed models when `model` is not among them."""
        if principal.may_use(model):
            return
        allowed = sorted(m for m in available if principal.may_use(m))
        raise PermissionDenied(f'Model "{model}" is not available to this key. Available: '
                               f"{', '.join(allowed) or 'none'}.")

    # -- background refresh ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the store's keys are loaded (for `/ready`): until then only policy keys
        authenticate."""
        return self._store is None or self._loaded

    async def start(self) -> None:
        """Load the store's keys and start refreshing. An unreachable store is logged, not
        fatal: policy keys work at once and the poll keeps trying (see `ready`)."""
        if self._store is None:
            return
        try:
            await self.refresh()
        except Exception as e:
            self.refresh_errors += 1
            self._log_error("loading keys from the store failed; retrying every "
                            f"{self._refresh_s:g} s", e)
        self._tasks.append(asyncio.create_task(self._poll(), name="auth-refresh"))
        if self._redis_url:
            self._tasks.append(asyncio.create_task(self._listen(), name="auth-revocations"))

    async def prepare(self, policy: Policy) -> None:
        """Before a reload applies. A policy that brings tenants to a gateway started in open
        mode needs the key store (keys issued with `gateway keys create` live there): open it
        and load its keys now, or raise — the reload is then refused with nothing changed,
        rather than half-applied with every issued key locked out."""
        if not policy.tenants or self._store is not None:
            return
        store = open_key_store(policy.ledger.url, schema=policy.ledger.schema_name)
        try:
            revision, records = await store.changes_since(0)
        except Exception as e:
            with contextlib.suppress(Exception):
                await store.close()
            raise RuntimeError(
                "the new policy declares tenants, so issued keys must be loaded from the key "
                f"database ({type(e).__name__}: {e}); fix the database and reload again, or "
                "restart the gateway") from None
        self._store = store
        self._apply(records)
        self._revision = revision
        self._loaded = True
        self._tasks.append(asyncio.create_task(self._poll(), name="auth-refresh"))
        if self._redis_url:
            self._tasks.append(asyncio.create_task(self._listen(), name="auth-revocations"))

    async def refresh(self) -> None:
        """Apply the store's changes since the last refresh (one cheap query when none)."""
        if self._store is None:
            return
        revision, records = await self._store.changes_since(self._revision)
        self._apply(records)
        self._revision = revision
        self._loaded = True

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._refresh_s)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as e:  # keep serving with the last keys; say so, not too often
                self.refresh_errors += 1
                self._log_error("refreshing keys from the store failed", e)

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        backoff = 0.5
        while True:
            client = aioredis.Redis.from_url(self._redis_url or "", socket_connect_timeout=1.0)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                backoff = 0.5
                # A message may have been missed while (re)subscribing: check the store.
                self._wake.set()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if msg is not None:
                        self._on_message(msg.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._log_error("the key revocation channel failed", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _on_message(self, data: object) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        event, _, key_id = text.partition(":")
        record = self._records.get(key_id)
        if event == "revoke" and record is not None and record.hash not in self._policy_entries \
                and record.hash in self._entries:
            # Refuse at once, and say why (the client sees "was revoked" whichever of the
            # message and the store poll arrives first); the refresh woken below confirms it.
            # Every store key in the index is in `_records`, so its hash is found there.
            del self._entries[record.hash]
            self._revoked[record.hash] = record
        self._wake.set()

    def _log_error(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.error("%s: %s: %s", what, type(exc).__name__, exc)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # -- the admin API's functions ---------------------------------------------------------

    def _require_store(self) -> KeyStore:
        if self._store is None:
            raise InvalidRequest("No key database is configured (policy.ledger.url).")
        return self._store

    async def create_key(self, tenant: str, name: str | None = None,
                         expires: datetime | None = None) -> IssuedKey:
        """Issue a key for a tenant declared in the policy; the plaintext is in the result."""
        if tenant not in self._tenants:
            raise NotFound(f'Unknown tenant "{tenant}" (declared: '
                           f"{', '.join(sorted(self._tenants)) or 'none'}).")
        issued = await self._require_store().create(tenant, name, expires)
        self._apply([issued.record])
        await self._publish(f"create:{issued.record.id}")
        return issued

    async def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke a database key here at once, on other replicas within a second."""
        for name, t in self._tenants.items():
            if any(k.id == key_id for k in t.keys):
                raise InvalidRequest(f'Key "{key_id}" is declared in the policy (tenant '
                                     f'"{name}"): remove it from the policy file to revoke it.')
        record = await self._require_store().revoke(key_id)
        self._apply([record])
        await self._publish(f"revoke:{key_id}")
        return record

    async def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        """Policy keys and database keys (no hashes or plaintext in `KeyRecord.public()`)."""
        out = [KeyRecord(k.id, name, k.name, None, None,
                         parse_expiry(k.expires) if k.expires else None, None, "policy",
                         hash=k.hash)
               for name, t in self._tenants.items() if tenant in (None, name) for k in t.keys]
        if self._store is not None:
            out += await self._store.list(tenant)
        return out

    async def _publish(self, message: str) -> None:
        if self._redis_url:
            await publish_key_change(self._redis_url, self._channel, message)


async def publish_key_change(redis_url: str, channel: str, message: str) -> None:
    """Tell every replica a key changed (`revoke:<id>` or `create:<id>`); best effort — the
    store poll delivers the change within a second anyway. The CLI calls it after `revoke`."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        await client.publish(channel, message)
    except Exception as e:
        log.warning("could not publish key change %r: %s", message, e)
    finally:
        await client.aclose()


def key_channel(key_prefix: str) -> str:
    """The pub/sub channel of key changes for `state.key_prefix`."""
    return f"{key_prefix}keys:changed"

