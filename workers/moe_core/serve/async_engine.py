"""The engine on its own thread, for the asyncio server: requests in through a queue, tokens out to each
request's asyncio queue. Admission control lives here: a full queue is refused (the server answers 429)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from moe_core.serve.engine import LLMEngine
from moe_core.serve.sequence import FinishReason, SamplingParams, Sequence


class QueueFull(RuntimeError):
    """More requests in flight than the running batch and the waiting queue hold."""


@dataclass
class TokenEvent:
    token_id: int
    finished: bool
    finish_reason: FinishReason | None


@dataclass
class RequestHandle:
    seq: Sequence
    events: asyncio.Queue
    arrival: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_queue: int):
        self.engine = engine
        self.max_in_flight = engine.config.max_num_seqs + max_queue
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._incoming: list[tuple[list[int], SamplingParams, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._aborts: list[Sequence] = []
        self._handles: dict[int, tuple[RequestHandle, asyncio.AbstractEventLoop]] = {}
        self._in_flight = 0
        self._stop = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=30)

    @property
    def num_in_flight(self) -> int:
        return self._in_flight

    async def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestHandle:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._wake:
            if self.error is not None:
                raise RuntimeError(f"the engine stopped: {self.error!r}")
            if self._in_flight >= self.max_in_flight:
                raise QueueFull(
                    f"{self._in_flight} requests in flight; the server holds {self.max_in_flight}"
                )
            self._in_flight += 1
            self._incoming.append((prompt_ids, params, loop, future))
            self._wake.notify()
        return await future

    def abort(self, handle: RequestHandle) -> None:
        with self._wake:
            self._aborts.append(handle.seq)
            self._wake.notify()

    async def stream(self, handle: RequestHandle) -> AsyncIterator[TokenEvent]:
        while True:
            event = await handle.events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if event.finished:
                return

    # ---- the engine thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._wake:
                    while not (self._stop or self._incoming or self._aborts or self.engine.has_work()):
                        self._wake.wait()
                    if self._stop:
                        return
                    incoming, self._incoming = self._incoming, []
                    aborts, self._aborts = self._aborts, []
                for prompt_ids, params, loop, future in incoming:
                    self._admit(prompt_ids, params, loop, future)
                for seq in aborts:
                    self._finish_aborted(seq)
                for out in self.engine.step():
                    self._deliver(out.seq, out.new_token, out.finished)
        except BaseException as exc:  # the server reports it (health turns 503) instead of hanging requests
            self.error = exc
            for handle, loop in list(self._handles.values()):
                loop.call_soon_threadsafe(handle.events.put_nowait, exc)
            raise

    def _admit(self, prompt_ids, params, loop, future) -> None:
        try:
            seq = self.engine.add_request(prompt_ids, params)
        except Exception as exc:
            self._done()
            loop.call_soon_threadsafe(_set_exception, future, exc)
            return
        handle = RequestHandle(seq, asyncio.Queue())
        self._handles[seq.seq_id] = (handle, loop)
        loop.call_soon_threadsafe(_set_result, future, handle)

    def _finish_aborted(self, seq: Sequence) -> None:
        if seq.seq_id in self._handles and not seq.is_finished:
            self.engine.abort(seq)
            self._deliver(seq, -1, True)

    def _deliver(self, seq: Sequence, token: int, finished: bool) -> None:
        entry = self._handles.get(seq.seq_id)
        if entry is None:
            return
        handle, loop = entry
        if handle.first_token_at is None:
            handle.first_token_at = time.monotonic()
        loop.call_soon_threadsafe(handle.events.put_nowait, TokenEvent(token, finished, seq.finish_reason))
        if finished:
            del self._handles[seq.seq_id]
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
