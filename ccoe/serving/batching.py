"""Continuous batching across experts: requests join and leave a running batch at step boundaries.

One loop thread owns the model. Each iteration it either runs one prefill chunk of the newcomers or
one decode step for every active row, and while rows are running the two alternate: running rows
wait for at most one chunk (`max_prefill_tokens` prompt tokens across the newcomers) between two of
their tokens, however long the newcomers' prompts (chunked prefill, as vLLM and SGLang do; the
newcomers' KV cache grows chunk by chunk and joins the batch after their last chunk). A decode step
is one mixed-expert forward (`CCoEModel` with per-row routes), whatever the mix of experts.

The running batch is a left-padded KV cache, as TGI's `CausalLMBatch.concatenate` keeps one:
newcomers' caches are left-padded to the batch's length (or the batch's to theirs) and concatenated
on the batch dimension; positions are explicit per row, so padding changes no logits. Rows are kept
ordered by expert, so every expert's sub-batch is a slice (a view) of the batch and of the cache.
Finished rows are dropped with `batch_select_indices`, and cache columns that are padding in every
remaining row are cropped from the left.

Shapes: batch ids (B, 1) per decode step; cache keys/values (B, heads, L, head_dim); mask (B, L).

Work that needs the model to itself (expert planning, pushing or popping experts during a hot swap)
goes through `run_exclusive`: it runs in the loop thread between two steps.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ccoe.generation import left_pad, select_next_token
from ccoe.model import CCoEModel, Route


class QueueFull(RuntimeError):
    """The waiting queue is at `max_queue`: the caller should retry later (HTTP 429)."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding: greedy when `temperature` is 0, else sampling seeded by `seed`."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if len(self.stop) > 4 or any(not s for s in self.stop):
            raise ValueError("stop takes at most 4 non-empty strings")


@dataclass(frozen=True)
class Delta:
    """New text of a request (may be empty when a token only completes a character later)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The request is done: `reason` is stop (EOS or a stop string), length, or error (with `error`)."""

    reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


Event = Delta | Finished


@dataclass
class _Row:
    prompt_ids: list[int]
    route: Route
    params: SamplingParams
    emit: Callable[[Event], None]
    cancelled: threading.Event
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)
    sent: int = 0
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _Prefill:
    """Newcomers being prefilled chunk by chunk: left-padded ids and mask (n, L), positions (n, L),
    their own KV cache, and how many columns are done."""

    rows: list[_Row]
    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    cache: object
    done: int = 0


@dataclass
class EngineStats:
    """Counters since start (Prometheus counters) and the current gauges."""

    requests: int = 0
    finished: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    decode_steps: int = 0
    prefills: int = 0
    prefill_chunks: int = 0
    busy_s: float = 0.0
    waiting: int = 0
    active: int = 0


class RequestHandle:
    """What `submit` returns: `cancel()` ends the request at the next step (a client went away)."""

    def __init__(self, cancelled: threading.Event):
        self._cancelled = cancelled

    def cancel(self) -> None:
        self._cancelled.set()


class ContinuousBatcher:
    """Serve many generation requests on one `CCoEModel` with a batch that requests join and leave.

    `routes` name experts already pushed into the model (None = backbone); a route must stay in the
    model while a request uses it (see `in_use`)."""

    def __init__(self, model: CCoEModel, tokenizer, *, max_batch: int = 32, max_queue: int = 256,
                 max_prefill_tokens: int = 2048, max_context: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue, self.max_prefill_tokens = max_batch, max_queue, max_prefill_tokens
        config = model.backbone.config
        self.max_context = max_context or int(getattr(config, "max_position_embeddings", 2048))
        eos = tokenizer.eos_token_id if tokenizer is not None else getattr(config, "eos_token_id", None)
        self.eos = set([eos] if isinstance(eos, int) else list(eos or []))
        self.pad = (tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else next(iter(self.eos), 0))
        self.stats = EngineStats()
        self._waiting: queue.Queue[_Row] = queue.Queue()
        self._exclusive: queue.Queue[tuple[Callable[[], object], Future]] = queue.Queue()
        self._wake = threading.Condition()
        self._rows: list[_Row] = []
        self._prefill: _Prefill | None = None
        self._prefilled_last = False
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ccoe-batcher", daemon=True)
        self._device = next(model.lm.parameters()).device

    # -- public -----------------------------------------------------------------------------------

    def start(self) -> "ContinuousBatcher":
        self._thread.start()
        return self

    def close(self, timeout_s: float = 30) -> None:
        """Stop the loop; requests still active or waiting end with an error event."""
        self._stop.set()
        self._notify()
        self._thread.join(timeout_s)

    def submit(self, prompt_ids: Sequence[int], route: Route, params: SamplingParams, emit: Callable[[Event], None]) -> RequestHandle:
        """Queue a request; `emit` receives its Delta events and one Finished, from the loop thread."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + params.max_new_tokens > self.max_context:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens + max_tokens {params.max_new_tokens} exceeds the context of "
                             f"{self.max_context} tokens; shorten the prompt or lower max_tokens")
        if route is not None and route not in self.model.experts:
            raise KeyError(f"no expert {route!r} is loaded")
        if self._waiting.qsize() >= self.max_queue:
            raise QueueFull(f"{self.max_queue} requests are already waiting; retry later")
        cancelled = threading.Event()
        generator = torch.Generator().manual_seed(params.seed) if params.temperature > 0 and params.seed is not None else None
        self._waiting.put(_Row(list(prompt_ids), route, params, emit, cancelled, generator))
        self.stats.requests += 1
        self._notify()
        return RequestHandle(cancelled)

    def run_exclusive(self, fn: Callable[[], object]) -> Future:
        """Run `fn()` in the loop thread between two steps (the model to itself); its Future."""
        future: Future = Future()
        self._exclusive.put((fn, future))
        self._notify()
        return future

    def in_use(self) -> set[Route]:
        """Routes of the requests active or waiting now (a hot swap keeps these experts)."""
        prefill = self._prefill
        return ({row.route for row in list(self._rows)} | {row.route for row in list(self._waiting.queue)}
                | {row.route for row in (prefill.rows if prefill is not None else [])})

    # -- the loop ---------------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify()

    def _loop(self) -> None:
        while not self._stop.is_set():
            while not self._exclusive.empty():
                fn, future = self._exclusive.get()
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as err:  # handed to the caller, who reports it
                        future.set_exception(err)
            if not self._rows and self._prefill is None and self._waiting.empty():
                with self._wake:
                    self._wake.wait(timeout=0.5)
                continue
            started = time.perf_counter()
            try:
                wants_prefill = self._prefill is not None or (not self._waiting.empty() and len(self._rows) < self.max_batch)
                if wants_prefill and not (self._rows and self._prefilled_last):
                    self._admit()
                    self._prefilled_last = True
                else:
                    self._decode()
                    self._prefilled_last = False
            except Exception as err:  # a failed step ends its rows with the error; the server keeps running
                self._fail_all(f"{type(err).__name__}: {err}")
            self.stats.busy_s += time.perf_counter() - started
            self.stats.waiting, self.stats.active = self._waiting.qsize(), len(self._rows)
        self._fail_all("the server is shutting down")
        while not self._waiting.empty():
            self._waiting.get().emit(Finished("error", 0, 0, "the server is shutting down"))

    def _fail_all(self, message: str) -> None:
        for row in self._rows + (self._prefill.rows if self._prefill is not None else []):
            self.stats.errors += 1
            row.emit(Finished("error", len(row.prompt_ids), len(row.tokens), message))
        self._rows, self._cache, self._mask, self._prefill = [], None, None, None

    def _take_waiting(self) -> list[_Row]:
        """Waiting requests that fit the free rows and the prefill budget (at least one, whatever its
        length: a prompt over the budget is prefilled in chunks)."""
        taken, budget = [], self.max_prefill_tokens
        while not self._waiting.empty() and len(self._rows) + len(taken) < self.max_batch:
            head = self._waiting.queue[0]
            if taken and len(head.prompt_ids) > budget:
                break
            taken.append(self._waiting.get())
            budget -= len(head.prompt_ids)
        return [row for row in taken if not self._drop_if_cancelled(row)]

    def _drop_if_cancelled(self, row: _Row) -> bool:
        if row.cancelled.is_set():
            row.emit(Finished("cancelled", len(row.prompt_ids), 0))
            return True
        return False

    @torch.no_grad()
    def _admit(self) -> None:
        """Run the next prefill chunk of the newcomers (taking them from the queue first); after their
        last chunk, take their first tokens and merge them into the batch. A failed chunk ends the
        newcomers with the error and leaves the running rows as they were."""
        from transformers import DynamicCache

        if self._prefill is None:
            rows = self._take_waiting()
            if not rows:
                return
            ids, mask = left_pad([r.prompt_ids for r in rows], self.pad)
            ids, mask = ids.to(self._device), mask.to(self._device)
            # Full-length layers everywhere, sliding-window ones too (Gemma 3, Mistral): every row's cache is then
            # one left-padded (B, h, L, d) tensor per layer that merges and retires alike, and the sliding
            # layers' masks (built per layer type from the positions) hide what lies beyond their window.
            self._prefill = _Prefill(rows, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), DynamicCache())
        p = self._prefill
        end = min(p.ids.shape[1], p.done + max(1, self.max_prefill_tokens // len(p.rows)))
        try:
            out = self.model(p.ids[:, p.done:end], p.mask[:, :end], expert_ids=[r.route for r in p.rows], past_key_values=p.cache,
                             position_ids=p.positions[:, p.done:end], logits_to_keep=1, share_equal_rows=p.done == 0)
        except Exception as err:
            self._prefill = None
            for row in p.rows:
                self.stats.errors += 1
                row.emit(Finished("error", len(row.prompt_ids), 0, f"{type(err).__name__}: {err}"))
            return
        self.stats.prefill_chunks += 1
        p.done = end
        if end < p.ids.shape[1]:
            return
        self._prefill = None
        self.stats.prefills += 1
        self.stats.prompt_tokens += sum(len(r.prompt_ids) for r in p.rows)
        self._merge(p.rows, p.cache, p.mask)
        self._advance(p.rows, out.logits[:, -1, :])

    @torch.no_grad()
    def _decode(self) -> None:
        """One decode step for every active row: their last tokens (B, 1) through one mixed-expert forward."""
        last = torch.tensor([[row.tokens[-1]] for row in self._rows], device=self._device)
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=-1)
        positions = torch.tensor([[len(r.prompt_ids) + len(r.tokens) - 1] for r in self._rows], device=self._device)
        out = self.model(last, self._mask, expert_ids=[r.route for r in self._rows], past_key_values=self._cache,
                         position_ids=positions, logits_to_keep=1)
        self.stats.decode_steps += 1
        self._advance(list(self._rows), out.logits[:, -1, :])

    def _merge(self, rows: list[_Row], cache, mask: torch.Tensor) -> None:
        """Concatenate the newcomers' cache (n, h, Ln, d) and mask (n, Ln) with the batch's, left-padding
        the shorter; then reorder the rows so that each expert's rows are contiguous."""
        if not self._rows:
            self._rows, self._cache, self._mask = rows, cache, mask
        else:
            width = max(self._mask.shape[1], mask.shape[1])
            for old, new in zip(self._cache.layers, cache.layers):
                old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)], dim=0)
                old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)], dim=0)
            self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)], dim=0)
            self._rows = self._rows + rows
        first_seen = {route: n for n, route in enumerate(dict.fromkeys(r.route for r in self._rows))}
        order = sorted(range(len(self._rows)), key=lambda i: first_seen[self._rows[i].route])
        if order != list(range(len(self._rows))):
            self._select(order)

    def _select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, dtype=torch.long, device=self._device)
        for layer in self._cache.layers:
            layer.batch_select_indices(index)
        self._mask = self._mask[index]
        self._rows = [self._rows[i] for i in keep]

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Choose next tokens for `rows` from their logits (n, V), emit text, retire finished rows."""
        chosen = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            if row.params.temperature > 0:
                chosen[i] = select_next_token(logits[i:i + 1], do_sample=True, temperature=row.params.temperature,
                                              top_k=row.params.top_k, top_p=row.params.top_p, generator=row.generator)[0]
        done = set()
        for row, token in zip(rows, chosen.tolist()):
            reason = self._step_row(row, token)
            if reason is not None:
                done.add(id(row))
                self.stats.finished += 1
                self.stats.completion_tokens += len(row.tokens)
                row.emit(Finished(reason, len(row.prompt_ids), len(row.tokens)))
        if done:
            self._retire([i for i, row in enumerate(self._rows) if id(row) not in done])

    def _step_row(self, row: _Row, token: int) -> str | None:
        """Append a token, emit the text that is now certain; the finish reason or None."""
        if row.cancelled.is_set():
            return "cancelled"
        if token in self.eos:
            self._emit_text(row, final=True)
            return "stop"
        row.tokens.append(token)
        stopped = self._emit_text(row, final=False)
        if stopped:
            return "stop"
        if len(row.tokens) >= row.params.max_new_tokens:
            self._emit_text(row, final=True)
            return "length"
        return None

    def _emit_text(self, row: _Row, final: bool) -> bool:
        """Emit decoded text past what was sent; hold back a partial character and a possible stop
        string's beginning until they are certain. True when a stop string ended the text."""
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s, max(0, row.sent - len(s) + 1)) for s in row.params.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, final = text[:cut], True
        elif not final:
            if text.endswith("\ufffd"):
                text = text[:-1]
            hold = max((len(s) - 1 for s in row.params.stop), default=0)
            text = text[:max(row.sent, len(text) - hold)]
        if len(text) > row.sent:
            row.emit(Delta(text[row.sent:]))
            row.sent = len(text)
        return cut >= 0

    def _retire(self, keep: list[int]) -> None:
        """Keep only rows `keep`; crop cache columns that are padding in every remaining row."""
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        self._select(keep)
        start = int(self._mask.any(dim=0).nonzero()[0])
        if start:
            self._mask = self._mask[:, start:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad dim 2 (cache: B, h, L, d) or dim 1 (mask: B, L) on the left to `width`."""
    dim = 2 if tensor.ndim == 4 else 1
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
