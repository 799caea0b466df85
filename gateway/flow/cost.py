"""What one request costs flow control: an estimate of the work it adds to a backend, in
tokens, made from the body alone before routing.

The cost is the tokens the backend must newly compute and store — the messages after the last
assistant reply (a conversation's new turn: the user's message, or tool results), system and
developer messages left out — plus the tokens it may generate (`max_tokens`, else the pool's
`expected_output_tokens`). The earlier turns and the system prompt are left out because a
prefix-caching backend already holds them: a multi-turn chat re-sends its whole history every
turn, and counting it would make a light chat tenant look as heavy as a tenant sending long
new prompts. It is an estimate (characters ÷ 4, `CHARS_PER_TOKEN`), known to be wrong for a
unique document placed in a system message; the simulator (bench/sim/flow.py) uses this same
function on the bodies it builds.

`reread_tokens` is the other half of the same walk: the history a request re-sends (every
message up to its last assistant reply, system and developer messages left out) — KV earlier
requests wrote and this one reads back. `gateway/flow/reuse.py` compares the two per tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.accounting.estimate import estimate_prompt_tokens, json_chars

CHARS_PER_TOKEN = 4
_CACHED_ROLES = frozenset({"system", "developer"})


def request_cost(body: Mapping[str, Any], expected_output_tokens: int) -> float:
    """Estimated new prompt tokens + output tokens of an OpenAI-shaped request (at least 1)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = 0
        for m in reversed(messages):  # the new turn is at the end: stop at the last reply
            if not isinstance(m, Mapping):
                continue
            role = m.get("role")
            if role == "assistant":
                break
            if role in _CACHED_ROLES:
                continue
            content = m.get("content")
            chars += len(content) if isinstance(content, str) else json_chars(content)
        prompt = chars // CHARS_PER_TOKEN
    else:  # completions, or a body not translated yet: the whole prompt
        prompt = estimate_prompt_tokens(body)
    out = body.get("max_completion_tokens") or body.get("max_tokens")
    output = out if isinstance(out, int) and out > 0 else expected_output_tokens
    return float(max(1, prompt + output))


def reread_tokens(body: Mapping[str, Any]) -> int:
    """Estimated tokens of the conversation a request re-sends: its non-system messages up to
    and including the last assistant reply (0 for a first turn or a body without messages)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    chars = 0
    seen_reply = False
    for m in reversed(messages):
        if not isinstance(m, Mapping):
            continue
        role = m.get("role")
        if role == "assistant":
            seen_reply = True
        if not seen_reply or role in _CACHED_ROLES:
            continue
        content = m.get("content")
        chars += len(content) if isinstance(content, str) else json_chars(content)
    return chars // CHARS_PER_TOKEN
