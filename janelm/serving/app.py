"""The HTTP side of `janelm serve`: OpenAI's completions, chat completions and models endpoints,
a health check and the page, on FastAPI.

Handlers never decode: they turn a request into jobs for the batcher (janelm.serving.batcher, in
a process of its own: janelm.serving.decoder), and read back what it delivers through an asyncio
queue, so the event loop stays free for other requests while the model works. Every failure is OpenAI's error object
with a status (400 bad input, 401 key, 413 body, 429 queue, 503 shutting down), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

import fastapi
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from janelm.console import note
from janelm.dialogue import fit_history, narration, pick_quotes, replied, reply_opening, reply_piece, reply_stops, said
from janelm.errors import InputError, first_line
from janelm.config import SamplingOptions
from janelm.serving.jobs import Closed, Job, QueueFull

if TYPE_CHECKING:
    from janelm.serving.batcher import Batcher
    from janelm.serving.decoder import DecoderProcess
from janelm.serving.schemas import ChatRequest, CompletionRequest, Reply, Sampling, error_body, usage

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "index.html", "/page.js": "page.js", "/page.css": "page.css"}
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for completions
UNION_TAGS = {"str", "int", "float", "bool"}  # how pydantic names the member of a union that failed


@dataclass(frozen=True)
class Settings:
    model_name: str
    defaults: SamplingOptions  # for requests that leave an option out
    user: str = "Elizabeth"  # chat: who speaks, and who answers, unless the request names them
    bot: str = "Mr. Darcy"
    max_reply: int = 120  # chat's default max_tokens, as `janelm chat --max-reply`
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_tokens: int = 4096
    created: int = 0  # /v1/models: when the model was made (its checkpoint's time), in Unix seconds


class APIError(fastapi.HTTPException):
    """An error answered with OpenAI's error object."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(status, message)
        self.body = error_body(message, kind, param, code)


class BodyTooLarge(APIError):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this server takes ({limit:,} bytes; --max-body-bytes)",
                         code="request_too_large")


class Handover:
    """Events from the batcher's thread to the event loop: one wake-up of the loop carries all that
    arrived since the last (a step of 16 rows: one wake-up, not 16, each a write to the loop's pipe
    and a turn of the loop under the GIL the decoding shares)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock = loop, threading.Lock()
        self.pending: list[tuple[asyncio.Queue, Any]] = []

    def post(self, queue: asyncio.Queue, item: Any) -> None:
        with self.lock:
            self.pending.append((queue, item))
            if len(self.pending) > 1:
                return  # a wake-up is on its way, and takes this too
        try:
            self.loop.call_soon_threadsafe(self._hand_over)
        except RuntimeError:  # the loop is closed: the server has stopped, and no client waits for these
            pass

    def _hand_over(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
        for queue, item in pending:
            queue.put_nowait(item)


def create_app(batcher: Batcher | DecoderProcess, tokenizer, settings: Settings) -> FastAPI:
    """The app over a batcher: in `janelm serve` a DecoderProcess, which stands in for one."""
    app = FastAPI(title="JaneLM", docs_url=None, redoc_url=None, openapi_url=None)
    context = batcher.context
    quotes = pick_quotes(tokenizer)
    handovers: dict[asyncio.AbstractEventLoop, Handover] = {}  # one loop, in practice

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body, status_code=e.status_code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), kind), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(e.errors()), status_code=400)

    @app.get("/health")
    async def health() -> JSONResponse:
        closing = batcher.deadline is not None
        return JSONResponse({"status": "shutting down" if closing else "ok", **batcher.load()},
                            status_code=503 if closing else 200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": settings.created,
                                            "owned_by": "janelm"}]}

    for route, name in PAGES.items():
        app.add_api_route(route, lambda name=name: FileResponse(STATIC / name), methods=["GET"], include_in_schema=False)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prompts = prompt_ids(body.prompt, tokenizer, context)
        max_tokens = checked_max_tokens(body.max_tokens, DEFAULT_COMPLETION_TOKENS, settings.max_tokens)
        echoes = [tokenizer.decode(ids) if body.echo else "" for ids in prompts]
        prompts = [ids or tokenizer.encode("\n") for ids in prompts]  # as sample: no prompt is a fresh paragraph
        return await answer(request, body, Reply(False, settings.model_name), prompts, max_tokens, body.stops(),
                            [e for e in echoes for _ in range(body.n)])

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Response:
        max_tokens = checked_max_tokens(body.max_completion_tokens if body.max_completion_tokens is not None
                                        else body.max_tokens, settings.max_reply, settings.max_tokens)
        user, bot = body.as_ or settings.user, body.with_ or settings.bot
        turns = []
        for m in body.messages:
            if m.role in ("system", "developer"):
                turns.append(narration(m.text()))
            elif m.role == "user":
                turns.append(said(m.text(), m.name or user, quotes))
            else:
                turns.append(replied(m.text(), m.name or bot, quotes))
        text = fit_history(turns, tokenizer, max(1, context - max_tokens)) + reply_opening(bot, quotes)
        ids = encode(tokenizer, text, "messages")[-context:]
        return await answer(request, body, Reply(True, settings.model_name), [ids], max_tokens,
                            reply_stops(quotes) + body.stops(), [""] * body.n)

    async def answer(request: Request, body: Sampling, reply: Reply, prompts: list[list[int]], max_tokens: int,
                     stops: list[str], echoes: list[str]) -> Response:
        if len(prompts) * body.n > batcher.max_rows:
            raise APIError(400, f"{len(prompts) * body.n} choices asked for; this server decodes at most "
                                f"{batcher.max_rows} at once", param="n")
        d = settings.defaults
        opts = SamplingOptions(d.temperature if body.temperature is None else body.temperature,
                               d.top_k if body.top_k is None else body.top_k,
                               d.top_p if body.top_p is None else body.top_p,
                               d.repetition_penalty if body.repetition_penalty is None else body.repetition_penalty)
        seed = body.seed if body.seed is not None else int.from_bytes(os.urandom(7), "little")
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        handover = handovers.get(loop) or handovers.setdefault(loop, Handover(loop))

        def deliverer(index: int):
            return lambda event: handover.post(queue, (index, event))

        jobs: list[Job] = []
        for ids in prompts:
            for k in range(body.n):  # choice k draws with seed + k
                jobs.append(Job(ids, max_tokens, opts, seed + k, stops, deliverer(len(jobs))))
        try:
            batcher.submit(jobs)
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e}; retry shortly", "rate_limit_error", code="queue_full") from None
        except Closed as e:
            raise APIError(503, str(e), "server_error", code="shutting_down") from None
        prompt_tokens = sum(len(ids) for ids in prompts)
        if body.stream:
            return StreamingResponse(stream(reply, jobs, queue, prompt_tokens, echoes), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await whole(request, reply, jobs, queue, prompt_tokens, echoes)

    return app


async def stream(reply: Reply, jobs: list[Job], queue: asyncio.Queue, prompt_tokens: int,
                 echoes: list[str]) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format; the rows are freed if the client goes away."""
    texts, left, produced = [""] * len(jobs), len(jobs), 0
    try:
        first = [sse(reply.chunk(i, echo if not reply.chat else "", role=reply.chat)) for i, echo in enumerate(echoes)
                 if reply.chat or echo]
        if first:
            yield "".join(first)
        while left:
            events = [await queue.get()]
            while not queue.empty():  # what came while the last chunk was sent goes in one write
                events.append(queue.get_nowait())
            pieces: dict[int, str] = {}  # a choice's text since the last write: one chunk
            finishes: dict[int, str] = {}
            for i, event in events:
                if event.finish == "error":
                    yield chunks(reply, pieces, finishes) + sse(error_body(event.error, "server_error"))
                    return
                text = reply_piece(texts[i], event.text) if reply.chat else event.text
                texts[i] += text
                pieces[i] = pieces.get(i, "") + text
                if event.finish:
                    left, produced = left - 1, produced + event.tokens
                    finishes[i] = event.finish
            out = [chunks(reply, pieces, finishes)]
            if not left:
                out.append(sse(reply.usage_chunk(usage(prompt_tokens, produced))) + "data: [DONE]\n\n")
            yield "".join(out)
    finally:
        for job in jobs:
            job.cancelled = True  # a finished row is gone already; a running one is freed at the next step


def chunks(reply: Reply, pieces: dict[int, str], finishes: dict[int, str]) -> str:
    """Each choice's new text as one chunk, then a chunk for each that finished."""
    out = [sse(reply.chunk(i, text)) for i, text in pieces.items() if text]
    out += [sse(reply.chunk(i, None if reply.chat else "", finish)) for i, finish in finishes.items()]
    return "".join(out)


async def whole(request: Request, reply: Reply, jobs: list[Job], queue: asyncio.Queue, prompt_tokens: int,
                echoes: list[str]) -> Response:
    """The whole answer at once; the rows are freed if the client goes away meanwhile."""
    texts, finishes = list(echoes), [""] * len(jobs)
    produced, left = 0, len(jobs)
    try:
        while left:
            try:
                i, event = await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return Response(status_code=499)
                continue
            if event.finish == "error":
                status = 503 if "shutting down" in event.error else 500
                return JSONResponse(error_body(event.error, "server_error"), status_code=status)
            texts[i] += reply_piece(texts[i], event.text) if reply.chat else event.text
            if event.finish:
                finishes[i], left, produced = event.finish, left - 1, produced + event.tokens
    finally:
        for job in jobs:
            job.cancelled = True
    return JSONResponse(reply.whole(texts, finishes, usage(prompt_tokens, produced)))


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def encode(tokenizer, text: str, param: str) -> list[int]:
    try:
        return tokenizer.encode(text)
    except InputError as e:
        raise APIError(400, f"{param}: {e}", param=param) from None


def prompt_ids(prompt: str | list, tokenizer, context: int) -> list[list[int]]:
    """A completion's prompts as token ids: a text, texts, token ids or lists of them."""
    if isinstance(prompt, str):
        prompts = [encode(tokenizer, prompt, "prompt")]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    elif prompt:
        prompts = [encode(tokenizer, p, "prompt") if isinstance(p, str) else list(p) for p in prompt]
    else:
        raise APIError(400, "prompt: give a text, texts, or token ids", param="prompt")
    vocab = tokenizer.vocab_size
    for ids in prompts:
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt: token ids must be in 0..{vocab - 1}", param="prompt")
        if len(ids) > context:
            raise APIError(400, f"the prompt is {len(ids)} tokens, more than the model's context of {context}: "
                                f"shorten it", param="prompt", code="context_length_exceeded")
    return prompts


def checked_max_tokens(asked: int | None, default: int, limit: int) -> int:
    if asked is None:
        return min(default, limit)
    if asked > limit:
        raise APIError(400, f"max_tokens is {asked:,}, more than this server generates ({limit:,}; --max-tokens)",
                       param="max_tokens")
    return asked


def validation_error(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """pydantic's first complaint as OpenAI's error object, the field named in `param`."""
    error = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    if error["type"] == "json_invalid":
        return error_body(f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'JSON decode error')}): "
                          "send a JSON object")
    if error["type"] == "extra_forbidden":
        return error_body(f"Unrecognized request argument supplied: {loc[-1]}", param=loc[-1])
    param = loc[0] if loc else None
    where = ".".join(p for p in loc if p not in UNION_TAGS and "[" not in p) or "the body"
    return error_body(f"{where}: {error['msg']}", param=param)


class Guard:
    """Outermost ASGI layer: the API key (401), the body-size limit (413), and any failure as a
    500 error object with one line on stderr, never a traceback."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings
        self.key = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        limit = self.settings.max_body_bytes

        async def tracked_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        headers = dict(scope.get("headers", []))
        if self.key and scope["path"].startswith("/v1/") and not secrets.compare_digest(headers.get(b"authorization", b""), self.key):
            return await reply(send, 401, error_body("a missing or wrong API key: send Authorization: Bearer KEY",
                                                     code="invalid_api_key"))
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > limit:
            return await reply(send, 413 if length.isdigit() else 400, BodyTooLarge(limit).body if length.isdigit()
                               else error_body("a Content-Length that is not a number"))
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, limited_receive, tracked_send)
        except Exception as e:  # noqa: BLE001 - whatever it is, the client gets a status and stderr one line
            if type(e).__name__ != "ClientDisconnect":
                note(f"janelm serve: error answering {scope['method']} {scope['path']}: {first_line(e, 300)}")
            if not started:
                await reply(send, 500, error_body("internal error: see the server's log", "server_error"))


async def reply(send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
