"""Responses handed to the store and not yet in its database: what a read on this replica
sees until the batch that writes them commits (`ResponseStore.put_later`).

A response is held from the moment it is put (before its client has the last byte) until its
batch is committed, so a follow-up turn sent to the same replica finds it at once. The map is
bounded: past `limit` responses (a database down for long) the oldest are dropped, counted.
"""

from __future__ import annotations

from gateway.conversation.records import StoredResponse

Key = tuple[str, str]  # (tenant, id)


def _live(r: StoredResponse, now: int) -> bool:
    return r.expires_at is None or r.expires_at > now


class PendingResponses:
    """`queued`: waiting for the next batch; `writing`: the batch being written. Both are in
    the order the responses were put, oldest first."""

    __slots__ = ("dropped", "limit", "queued", "writing")

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.queued: dict[Key, StoredResponse] = {}
        self.writing: dict[Key, StoredResponse] = {}
        self.dropped = 0  # responses given up on: over `limit`, or a batch that cannot be written

    def __len__(self) -> int:
        return len(self.queued) + len(self.writing)

    def add(self, r: StoredResponse) -> None:
        key = (r.tenant, r.id)
        self.queued.pop(key, None)  # put again (a retry): the newest copy, in the newest place
        self.queued[key] = r
        self._trim()

    def take(self) -> list[StoredResponse]:
        """The next batch: everything queued, now `writing`."""
        self.writing, self.queued = self.queued, {}
        return list(self.writing.values())

    def written(self) -> None:
        self.writing = {}

    def failed(self) -> None:
        """The batch could not be written: it goes back in front of anything put since."""
        self.queued = {**self.writing, **self.queued}
        self.writing = {}
        self._trim()

    def lost(self) -> int:
        """The batch cannot be written at all (not a database outage): given up, counted."""
        n, self.writing = len(self.writing), {}
        self.dropped += n
        return n

    def _trim(self) -> None:
        while len(self) > self.limit and self.queued:
            del self.queued[next(iter(self.queued))]
            self.dropped += 1

    def find(self, tenant: str, id: str, now: int) -> StoredResponse | None:
        key = (tenant, id)
        r = self.queued.get(key) or self.writing.get(key)
        return r if r is not None and _live(r, now) else None

    def discard(self, tenant: str, id: str) -> tuple[bool, bool]:
        """Forget a queued response (`DELETE`): (whether it was queued, whether it is in the
        batch being written, which the caller must let finish before deleting the row)."""
        return self.queued.pop((tenant, id), None) is not None, (tenant, id) in self.writing

    def walk(self, tenant: str, id: str, now: int, max_turns: int
             ) -> tuple[list[StoredResponse], str | None]:
        """The newest part of the conversation ending at `id` that is held here (newest
        first, at most `max_turns`), and the id where it goes on in the database (None: it
        ends here). Links stay in the tenant, as the database's walk does."""
        out: list[StoredResponse] = []
        cur: str | None = id
        while cur is not None and len(out) < max_turns:
            r = self.find(tenant, cur, now)
            if r is None:
                return out, cur
            out.append(r)
            cur = r.previous_response_id
        return out, None
