"""The `stored_responses` table and its statements: one SQL text for SQLite and PostgreSQL.

A `Dialect` fills in what differs: column types, the placeholder, and how JSON goes in and
comes out. JSON is TEXT in SQLite and `json` in PostgreSQL — not `jsonb`, which cannot hold
U+0000 (a model may well emit it) and reorders keys, while `GET /v1/responses/{id}` must give
back the object the client got. Nothing queries inside the JSON, so `jsonb` would buy nothing.
Reads cast it back to text, so both backends hand the same rows to the same parser.

Expiry is in every read: `expires_at` is epoch seconds, a row is visible while `now <
expires_at`, and `now` is a parameter (the store's clock). The tenant is in every WHERE.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLE = "stored_responses"
COLUMNS = ("id", "tenant", "model", "created_at", "status", "previous_response_id",
           "provider", "upstream_id", "expires_at", "input_items", "output", "response")
JSON_COLUMNS = frozenset({"input_items", "output", "response"})
# purge_expired deletes this many rows per statement, so no transaction holds the table
# (SQLite: the whole database) for long while a large backlog goes.
PURGE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Dialect:
    ph: str
    text: str
    int: str
    json: str
    # How a JSON parameter is written ("{}" is the placeholder) and a JSON column read.
    json_in: str
    json_out: str


SQLITE = Dialect(ph="?", text="TEXT", int="INTEGER", json="TEXT", json_in="{}",
                 json_out="{}")
POSTGRES = Dialect(ph="%s", text="text", int="bigint", json="json", json_in="{}::json",
                   json_out="{}::text")


@dataclass(frozen=True, slots=True)
class Statements:
    schema: str
    # Parameters: the COLUMNS, in order.
    put: str
    # (tenant, id, now)
    get: str
    delete: str
    input_items: str
    # (tenant, id, now, tenant, max_turns, now)
    chain: str
    # (now, batch)
    purge: str


def statements(d: Dialect) -> Statements:
    ph = d.ph
    live = f"(expires_at IS NULL OR expires_at > {ph})"
    read = ", ".join(d.json_out.format(c) if c in JSON_COLUMNS else c for c in COLUMNS)
    values = ", ".join(d.json_in.format(ph) if c in JSON_COLUMNS else ph for c in COLUMNS)
    update = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in ("id", "tenant"))
    one = f"FROM {TABLE} WHERE tenant = {ph} AND id = {ph} AND {live}"
    cols = ", ".join(COLUMNS)
    r_cols = ", ".join(f"r.{c}" for c in COLUMNS)
    return Statements(
        schema=(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (\n"
            f"    id {d.text} NOT NULL, tenant {d.text} NOT NULL, model {d.text} NOT NULL,\n"
            f"    created_at {d.int} NOT NULL, status {d.text} NOT NULL,\n"
            f"    previous_response_id {d.text}, provider {d.text}, upstream_id {d.text},\n"
            f"    expires_at {d.int}, input_items {d.json} NOT NULL,\n"
            f"    output {d.json} NOT NULL, response {d.json} NOT NULL,\n"
            "    PRIMARY KEY (tenant, id)\n"
            ");\n"
            f"CREATE INDEX IF NOT EXISTS {TABLE}_expiry ON {TABLE} (expires_at)"
            " WHERE expires_at IS NOT NULL"
        ),
        # A repeated put of the same id (a retried store) replaces the row.
        put=(f"INSERT INTO {TABLE} ({cols}) VALUES ({values}) "
             f"ON CONFLICT (tenant, id) DO UPDATE SET {update}"),
        get=f"SELECT {read} {one}",
        delete=f"DELETE {one}",
        input_items=f"SELECT {d.json_out.format('input_items')} {one}",
        # Walk previous_response_id back from `id` in one query: every step stays in the
        # tenant and skips expired rows, so a missing, expired or foreign link ends the walk
        # and the chain is the part after it. `turn` bounds the walk (and any cycle).
        chain=(
            f"WITH RECURSIVE chain AS (\n"
            f"    SELECT {cols}, 1 AS turn {one}\n"
            "    UNION ALL\n"
            f"    SELECT {r_cols}, chain.turn + 1 FROM {TABLE} r\n"
            "    JOIN chain ON r.tenant = chain.tenant AND r.id = chain.previous_response_id\n"
            f"    WHERE r.tenant = {ph} AND chain.turn < {ph}\n"
            f"      AND (r.expires_at IS NULL OR r.expires_at > {ph})\n"
            f") SELECT {read} FROM chain ORDER BY turn DESC"
        ),
        purge=(f"DELETE FROM {TABLE} WHERE (tenant, id) IN (SELECT tenant, id FROM {TABLE} "
               f"WHERE expires_at IS NOT NULL AND expires_at <= {ph} LIMIT {ph})"),
    )
