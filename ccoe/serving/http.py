"""`ccoe serve`: an OpenAI-compatible HTTP server for a CCoE model (FastAPI + uvicorn).

Endpoints: `/v1/completions`, `/v1/chat/completions` (both with SSE streaming), `/v1/models`,
`/health` and `/metrics` (Prometheus text). A request's `model` is `auto` (the version's gate picks
the expert), `backbone`, or an expert's name; every response carries a `ccoe` object saying which
expert answered, why, and from which registry version (streams: in every chunk).

Requests are untrusted: the body is size-limited before it is parsed, unknown fields and bad
sampling values get one HTTP 400 naming the field, an unknown model 404, a full queue 429, and the
server keeps running. Generation runs in `ccoe.serving.batching.ContinuousBatcher`; the served version and
its experts in `ccoe.serving.hot_swap.ExpertPool`, which follows the registry alias.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import threading
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ccoe.config import ServeSpec
from ccoe.serving.batching import Delta, Finished, QueueFull, SamplingParams
from ccoe.serving.hot_swap import PLAN, ExpertPool, Resolved, UnknownModel


class _Body(BaseModel):
    """Fields both endpoints take. OpenAI fields ccoe cannot honour are refused unless at their default."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    n: Literal[1] = 1
    user: str | None = None
    presence_penalty: Literal[0, 0.0] = 0
    frequency_penalty: Literal[0, 0.0] = 0

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(max_new_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
                              temperature=self.temperature, top_p=None if self.top_p >= 1 else self.top_p,
                              top_k=self.top_k, seed=self.seed, stop=stops)


class CompletionBody(_Body):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("one prompt per request (send a list of exactly one, or a string)")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty")
        return value


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status)


def encode_chat(tokenizer, messages: list[Message]) -> list[int]:
    """Chat messages -> prompt ids through the tokenizer's chat template (what the experts were trained on)."""
    turns = [{"role": m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer("\n".join(m.content for m in messages))["input_ids"]


class Metrics:
    """HTTP-side counters; the engine's and the pool's are read when /metrics is scraped."""

    def __init__(self):
        self.rejected: dict[int, int] = {}
        self.in_flight = 0
        self.started = time.time()

    def render(self, pool: ExpertPool) -> str:
        s, lines = pool.engine.stats, []

        def metric(name: str, kind: str, help_: str, value, labels: str = "") -> None:
            lines.extend([f"# HELP ccoe_{name} {help_}", f"# TYPE ccoe_{name} {kind}", f"ccoe_{name}{labels} {value}"])

        metric("requests_total", "counter", "generation requests accepted", s.requests)
        metric("requests_finished_total", "counter", "requests that ended with stop or length", s.finished)
        metric("request_errors_total", "counter", "requests that ended with an error", s.errors)
        metric("prompt_tokens_total", "counter", "prompt tokens prefilled", s.prompt_tokens)
        metric("completion_tokens_total", "counter", "tokens generated (rate() gives tokens/s)", s.completion_tokens)
        metric("decode_steps_total", "counter", "mixed-expert decode steps", s.decode_steps)
        metric("prefills_total", "counter", "newcomer groups prefilled and merged into the batch", s.prefills)
        metric("prefill_chunks_total", "counter", "prefill forwards (a long prompt takes several chunks)", s.prefill_chunks)
        metric("busy_seconds_total", "counter", "seconds the batcher spent in forwards", round(s.busy_s, 3))
        metric("queue_depth", "gauge", "requests waiting for a batch row", s.waiting)
        metric("active_requests", "gauge", "rows in the running batch", s.active)
        metric("in_flight_requests", "gauge", "HTTP requests being answered", self.in_flight)
        metric("resident_experts", "gauge", "expert modules in memory (current version and requests in flight)", len(pool.model.experts))
        metric("grouped_stack_bytes", "gauge", "bytes of the grouped layers' weight stacks (ServeSpec.grouped_layers)",
               pool.model.stack_bytes())
        metric("swaps_total", "counter", "versions swapped in while serving", pool.swaps)
        metric("expert_loads_total", "counter", "expert blobs loaded (at start, swaps and cold requests: cache misses)", pool.loads)
        metric("expert_hits_total", "counter", "requests whose expert was resident (cache hits)", pool.hits)
        metric("expert_evictions_total", "counter", "least recently used experts evicted over max_resident", pool.evictions)
        metric("expert_reuses_total", "counter", "experts of a new version already resident at a swap", pool.reused)
        version = pool.current.version if pool.current.version is not None else 0
        metric("served_version", "gauge", "registry version being served (0: an artifact folder)", version)
        lines += ["# HELP ccoe_rejected_total requests refused before generation, by HTTP status", "# TYPE ccoe_rejected_total counter"]
        lines += [f'ccoe_rejected_total{{status="{code}"}} {n}' for code, n in sorted(self.rejected.items())]
        return "\n".join(lines) + "\n"


def create_app(pool: ExpertPool, spec: ServeSpec) -> FastAPI:
    """The HTTP app over a started pool (its engine running)."""
    app = FastAPI(title="ccoe", docs_url=None, redoc_url=None)
    metrics = Metrics()
    api_key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    if spec.api_key_env and not api_key:
        raise ValueError(f"api_key_env names {spec.api_key_env}, but that variable is not set")

    def refuse(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
        metrics.rejected[status] = metrics.rejected.get(status, 0) + 1
        return _error(status, message, kind, param)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            if api_key is not None:
                given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                if not hmac.compare_digest(given.encode(), api_key.encode()):
                    return refuse(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
            declared = request.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > spec.max_body_bytes):
                return refuse(413, f"the request body exceeds {spec.max_body_bytes} bytes", "invalid_request_error")
            if declared is None and request.method == "POST":
                return refuse(411, "send a Content-Length header", "invalid_request_error")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = "the body is not valid JSON" if first.get("type") == "json_invalid" else f"{where}: {first.get('msg')}"
        return refuse(400, message, "invalid_request_error", where)

    @app.get("/health")
    async def health():
        return {"status": "ok", "serving": pool.current.label, "last_refresh_error": pool.last_error}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return metrics.render(pool)

    @app.get("/v1/models")
    async def models():
        served = pool.current
        created = int(served.loaded_at)
        experts = served.manifest.routable_experts()
        data = [{"id": name, "object": "model", "created": created, "owned_by": "ccoe",
                 "ccoe": {"version": served.version, "source": served.source,
                          "domain": experts[name].domain if name in experts else None,
                          "resident": name not in experts or served.keys[name] in pool.model.experts}} for name in served.model_names()]
        return {"object": "list", "data": data}

    async def answer(body: _Body, prompt_ids: list[int], route_text: str, kind: str):
        if metrics.in_flight >= spec.max_concurrent:
            return refuse(429, f"{spec.max_concurrent} requests are in flight; retry later", "rate_limit_error")
        try:
            params = body.sampling(spec.default_max_tokens)
        except ValueError as err:
            return refuse(400, str(err), "invalid_request_error")
        if body.model == PLAN:
            return await planned(body, prompt_ids, route_text, kind)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)  # noqa: E731 (called from the batcher thread)
        try:
            resolved, handle = await asyncio.to_thread(pool.submit, body.model, route_text, prompt_ids, params, emit)  # may load a cold expert
        except UnknownModel as err:
            return refuse(404, str(err), "invalid_request_error", "model")
        except QueueFull as err:
            return refuse(429, str(err), "rate_limit_error")
        except ValueError as err:
            return refuse(400, str(err), "invalid_request_error", "max_tokens")
        except RuntimeError as err:  # a cold expert evicted again and again before its request was queued
            return refuse(503, str(err), "server_error")
        rid = _request_id(kind)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(events, handle, resolved, body.model, rid, kind, include_usage, metrics),
                                     media_type="text/event-stream", headers={"x-ccoe-expert": resolved.expert or "backbone"})
        metrics.in_flight += 1
        try:
            text, finished = await _collect(events)
        finally:
            handle.cancel()
            metrics.in_flight -= 1
        if finished.reason == "error":
            return _error(500, f"generation failed: {finished.error}", "server_error")
        return JSONResponse(_reply(rid, kind, body.model, resolved, text, finished),
                            headers={"x-ccoe-expert": resolved.expert or "backbone"})

    async def planned(body: _Body, prompt_ids: list[int], query: str, kind: str):
        """`model: plan`: the whole plan runs, then its answer is sent (as one chunk when streaming); the
        `ccoe` object holds the steps' experts and the trace."""
        try:
            result, version = await asyncio.to_thread(pool.plan, query)
        except UnknownModel as err:
            return refuse(404, str(err), "invalid_request_error", "model")
        except ValueError as err:
            return refuse(400, str(err), "invalid_request_error", "model")
        experts = ">".join(step.expert or "backbone" for step in result.plan.steps)
        resolved = Resolved(experts, None, result.plan.fallback or f"plan of {len(result.plan.steps)} step(s)", version)
        finished = Finished("stop", len(prompt_ids), len(pool.tokenizer(result.text, add_special_tokens=False)["input_ids"]))
        rid = _request_id(kind)
        if body.stream:
            events: asyncio.Queue = asyncio.Queue()
            for event in (Delta(result.text), finished):
                events.put_nowait(event)
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(events, _Done(), resolved, body.model, rid, kind, include_usage, metrics),
                                     media_type="text/event-stream", headers={"x-ccoe-expert": experts})
        reply = _reply(rid, kind, body.model, resolved, result.text, finished)
        reply["ccoe"]["trace"] = result.as_dict()
        return JSONResponse(reply, headers={"x-ccoe-expert": experts})

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        return await answer(body, pool.tokenizer(body.prompt)["input_ids"], body.prompt, "text")

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody):
        users = [m.content for m in body.messages if m.role == "user"]
        return await answer(body, encode_chat(pool.tokenizer, body.messages), users[-1] if users else body.messages[-1].content, "chat")

    return app


def _request_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


class _Done:
    """The handle of a request that has already finished (a plan): nothing to cancel."""

    def cancel(self) -> None:
        return None


async def _collect(events: asyncio.Queue) -> tuple[str, Finished]:
    parts = []
    while True:
        event = await events.get()
        if isinstance(event, Finished):
            return "".join(parts), event
        parts.append(event.text)


def _provenance(resolved: Resolved) -> dict:
    return {"expert": resolved.expert or "backbone", "reason": resolved.reason, "version": resolved.version}


def _usage(finished: Finished) -> dict:
    return {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
            "total_tokens": finished.prompt_tokens + finished.completion_tokens}


def _reply(rid: str, kind: str, model: str, resolved: Resolved, text: str, finished: Finished) -> dict:
    reason = "length" if finished.reason == "length" else "stop"
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason} if kind == "chat"
              else {"index": 0, "text": text, "finish_reason": reason, "logprobs": None})
    return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": _usage(finished), "ccoe": _provenance(resolved)}


async def _stream(events: asyncio.Queue, handle, resolved: Resolved, model: str, rid: str, kind: str, include_usage: bool, metrics: Metrics):
    """SSE chunks as OpenAI sends them; the request is cancelled if the client goes away."""
    created, provenance = int(time.time()), _provenance(resolved)
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(delta: str | None, reason: str | None, usage: dict | None = None, role: bool = False) -> str:
        if kind == "chat":
            content = {"role": "assistant", "content": delta or ""} if role else ({} if delta is None else {"content": delta})
            choices = [{"index": 0, "delta": content, "finish_reason": reason}]
        else:
            choices = [{"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}]
        body = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, "ccoe": provenance}
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    metrics.in_flight += 1  # counted here, not before: a stream the client never reads must not leak the count
    try:
        if kind == "chat":
            yield chunk("", None, role=True)
        while True:
            event = await events.get()
            if isinstance(event, Delta):
                yield chunk(event.text, None)
                continue
            if event.reason == "error":
                yield f"data: {json.dumps({'error': {'message': f'generation failed: {event.error}', 'type': 'server_error'}})}\n\n"
            else:
                yield chunk(None, "length" if event.reason == "length" else "stop")
                if include_usage:
                    yield f"data: {json.dumps({'id': rid, 'object': obj, 'created': created, 'model': model, 'choices': [], 'usage': _usage(event)})}\n\n"
            yield "data: [DONE]\n\n"
            return
    finally:
        handle.cancel()
        metrics.in_flight -= 1


def serve(model_ref: str, spec: ServeSpec, tracking_uri: str | None = None, log=print) -> None:
    """Load the model, start the batcher and the alias follower, and answer until interrupted."""
    import uvicorn

    from ccoe.serving.batching import ContinuousBatcher
    from ccoe.serving.hot_swap import ManifestSource

    batcher = lambda model, tokenizer: ContinuousBatcher(model, tokenizer, max_batch=spec.max_batch, max_queue=spec.max_queue,  # noqa: E731
                                                         max_prefill_tokens=spec.max_prefill_tokens)
    pool = ExpertPool(ManifestSource(model_ref, tracking_uri), device=spec.device, dtype=spec.dtype, max_resident=spec.max_resident,
                      pin=spec.pin, grouped_layers=spec.grouped_layers, batcher=batcher)
    app = create_app(pool, spec)
    pool.engine.start()
    stop = threading.Event()
    follower = None
    if spec.poll_interval_s > 0:
        follower = threading.Thread(target=pool.follow, args=(spec.poll_interval_s, stop, log), name="ccoe-follow", daemon=True)
        follower.start()
    log(f"serving {pool.current.label} as {pool.current.model_names()} on http://{spec.host}:{spec.port}/v1")
    try:
        uvicorn.run(app, host=spec.host, port=spec.port, log_level="warning")
    finally:
        stop.set()
        pool.engine.close()
