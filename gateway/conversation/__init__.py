"""Stored Responses API responses, per tenant, in the ledger's database (docs/responses.md)."""

from gateway.conversation.records import StoredResponse, StoreUnavailable
from gateway.conversation.store import ResponseStore

__all__ = ["ResponseStore", "StoreUnavailable", "StoredResponse"]
