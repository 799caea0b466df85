"""A miss that streams: watch the OpenAI chunks go by (unchanged) and assemble the
`chat.completion` they add up to, stored only when the stream ended complete (`finish`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from gateway.stages.base import ReplyInfo

if TYPE_CHECKING:
    from gateway.stages.cache import CacheRun


class SSECapture:
    """Reads each `data:` payload of the events going by (which pass unchanged) until one
    shows the stream cannot be replayed (`ok` false)."""

    def __init__(self, run: CacheRun, info: ReplyInfo) -> None:
        self.run = run
        self.info = info
        # False once the stream carried something a replay would not reproduce.
        self.ok = True

    async def feed(self, chunk: bytes) -> bytes:
        if self.ok:
            for line in chunk.split(b"\n"):
                if line.startswith(b"data:"):
                    self._event(line[5:].strip())
        return chunk

    def _event(self, data: bytes) -> None:
        raise NotImplementedError


class StreamCapture(SSECapture):
    def __init__(self, run: CacheRun, info: ReplyInfo) -> None:
        super().__init__(run, info)
        self.head: dict[str, Any] = {}
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.finish_reason: Any = None

    def _event(self, data: bytes) -> None:
        if not data or data == b"[DONE]":
            return
        try:
            obj = msgspec.json.decode(data)
        except ValueError:
            self.ok = False
            return
        if not isinstance(obj, dict):
            return
        if not self.head:
            self.head = {k: obj[k] for k in ("id", "created", "model", "system_fingerprint")
                         if k in obj}
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0 or \
                    choice.get("logprobs") is not None:
                self.ok = False
                return
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.content.append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                self.refusal.append(delta["refusal"])
            for tc in delta.get("tool_calls") or ():
                self._tool(tc)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]

    def _tool(self, tc: Any) -> None:
        if not isinstance(tc, dict):
            self.ok = False
            return
        slot = self.tools.setdefault(int(tc.get("index", 0)), {
            "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if tc.get("id"):
            slot["id"] = tc["id"]
        fn = tc.get("function") or {}
        slot["function"]["name"] += fn.get("name") or ""
        slot["function"]["arguments"] += fn.get("arguments") or ""

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.tools:
            message["tool_calls"] = [self.tools[i] for i in sorted(self.tools)]
            if not self.content:
                message["content"] = None
        return {**self.head, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": self.finish_reason}]}

    async def finish(self) -> None:
        if not self.ok:
            return
        tr = self.info.translator
        usage = tr.usage if tr is not None else None
        self.run.keep(self.completion(), self.info, usage)
