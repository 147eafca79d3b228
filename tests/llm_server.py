"""A real, local OpenAI-compatible chat server for the tests: it streams, stalls and fails on cue.

``POST /v1/chat/completions`` with ``stream: true`` answers with Server-Sent Events —
``data: {chat.completion.chunk}`` lines, a final chunk with ``usage`` when
``stream_options.include_usage`` is set, then ``data: [DONE]`` — the way api.openai.com does.
Each request takes the next scripted :class:`Reply` (``server.script(...)``), or the default one,
and is recorded (``server.requests``) so a test can read the prompt the model was given.

The server runs aiohttp on its own event loop in a thread, so it keeps answering whatever the
test's loop is doing, and a worker process can reach it as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    """How to answer one request."""

    text: str = "The card paid an unusual amount at a terminal with a fraud history."
    status: int = 200
    retry_after: str | None = None  # the Retry-After header of an error answer
    words_per_chunk: int = 1
    pace_s: float = 0.0  # between chunks
    headers_delay_s: float = 0.0  # before the status line: a slow server
    start_delay_s: float = 0.0  # after the headers, before the first chunk: a slow start
    stall_after: int | None = None  # text chunks sent, then silence ...
    stall_s: float = 3_600.0  # ... for this long (or until ``release()``), then go on
    malformed_after: int | None = None  # text chunks sent, then a line that is not JSON
    disconnect_after: int | None = None  # text chunks sent, then the connection drops
    model: str = "test-model"


@dataclass
class Recorded:
    """One request as the server received it."""

    body: dict[str, Any]
    headers: dict[str, str]
    at: float

    @property
    def messages(self) -> list[dict[str, str]]:
        return list(self.body.get("messages", []))

    def content(self, role: str) -> str:
        return "\n".join(m["content"] for m in self.messages if m.get("role") == role)


@dataclass
class LLMServer:
    """``with LLMServer() as llm: ... llm.base_url ...``"""

    default: Reply = field(default_factory=Reply)
    host: str = "127.0.0.1"
    requests: list[Recorded] = field(default_factory=list)
    in_flight: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # --- the test's side -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def script(self, *replies: Reply) -> LLMServer:
        """The next requests get these replies, in order; later ones get ``default``."""
        with self._lock:
            self._script.extend(replies)
        return self

    def release(self) -> None:
        """End every stall now (and the ones to come)."""
        assert self._loop is not None and self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    def start(self) -> LLMServer:
        self._thread = threading.Thread(target=self._serve, name="llm-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test LLM server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self.release()
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the server's side -----------------------------------------------------------------

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, self.port)
        loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Recorded(body, dict(request.headers), time.monotonic()))
        reply = self._next_reply()
        self.in_flight += 1
        try:
            return await self._answer(request, body, reply)
        finally:
            self.in_flight -= 1

    async def _answer(
        self, request: web.Request, body: dict[str, Any], reply: Reply
    ) -> web.StreamResponse:
        if reply.headers_delay_s:
            await asyncio.sleep(reply.headers_delay_s)
        if reply.status != 200:
            headers = {"Retry-After": reply.retry_after} if reply.retry_after else {}
            error = {"error": {"message": f"scripted {reply.status}", "type": "test"}}
            return web.json_response(error, status=reply.status, headers=headers)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        created = int(time.time())
        ident = f"chatcmpl-test-{len(self.requests)}"

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            doc = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": reply.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + json.dumps(doc).encode() + b"\n\n"

        words = reply.text.split(" ")
        pieces = [
            " ".join(words[i : i + reply.words_per_chunk])
            + (" " if i + reply.words_per_chunk < len(words) else "")
            for i in range(0, len(words), reply.words_per_chunk)
        ]
        try:
            if reply.start_delay_s:
                await asyncio.sleep(reply.start_delay_s)
            await response.write(chunk({"role": "assistant", "content": ""}))
            for sent, piece in enumerate(pieces):
                if sent == reply.stall_after:
                    assert self._release is not None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._release.wait(), reply.stall_s)
                if sent == reply.malformed_after:
                    await response.write(b'data: {"id": "broken", "choices": [{"delta": \n\n')
                if sent == reply.disconnect_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await response.write(chunk({"content": piece}))
                if reply.pace_s:
                    await asyncio.sleep(reply.pace_s)
            await response.write(chunk({}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt = sum(len(m.get("content", "")) for m in body.get("messages", []))
                usage = {
                    "prompt_tokens": prompt // 4,
                    "completion_tokens": len(pieces),
                    "total_tokens": prompt // 4 + len(pieces),
                }
                doc = {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": reply.model,
                    "choices": [],
                    "usage": usage,
                }
                await response.write(b"data: " + json.dumps(doc).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client gave up (a stall timeout): nothing more to send
        return response
