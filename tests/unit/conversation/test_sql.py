"""The store's SQL: one text per statement for both databases, parameters as documented."""

from __future__ import annotations

import pytest

from gateway.conversation.sql import COLUMNS, POSTGRES, SQLITE, Dialect, statements

# How many parameters each statement takes (store.py passes exactly these).
ARITY = {"put": len(COLUMNS), "get": 3, "delete": 3, "input_items": 3, "chain": 6, "purge": 2}


@pytest.mark.parametrize("dialect", [SQLITE, POSTGRES], ids=["sqlite", "postgres"])
@pytest.mark.parametrize("name", sorted(ARITY))
def test_statement_takes_the_documented_parameters(dialect: Dialect, name: str) -> None:
    q = getattr(statements(dialect), name)
    assert q.count(dialect.ph) == ARITY[name]


@pytest.mark.parametrize("name", ["get", "delete", "input_items", "chain"])
def test_every_read_and_delete_is_scoped_to_the_tenant_and_hides_expired(name: str) -> None:
    q = getattr(statements(SQLITE), name)
    assert "tenant = ?" in q
    assert "expires_at > ?" in q


def test_the_chain_is_a_single_recursive_query() -> None:
    q = statements(POSTGRES).chain
    assert q.startswith("WITH RECURSIVE") and q.count(";") == 0
    assert q.count("r.tenant = %s") == 1


def test_postgres_reads_json_back_as_text_and_takes_it_as_json() -> None:
    s = statements(POSTGRES)
    assert "response::text" in s.get and "%s::json" in s.put
    assert " json NOT NULL" in s.schema and "jsonb" not in s.schema
