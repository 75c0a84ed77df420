"""One model, many requests: micro-batches of short clips, long recordings interleaved with them, bounded queue.

- **Short requests** (up to 30 s) that arrive together (``max_wait_ms``, at most ``max_batch``) go to
  ``Transcriber.transcribe_requests`` together: those with the same decoding settings share one
  mixed-language ``generate`` call; each keeps its own language and adapter, so its result equals an
  isolated call. A failing batch is retried one request at a time, so one bad input never fails others. Each
  answer is given as soon as it is final: rows that need the temperature fallback (looping, unlikely text) do not
  hold up the others, and short requests that arrive meanwhile are decoded between two of its temperatures.
  Jobs carry their ``Request`` as it is: the scheduler never looks inside it but for the audio's length.
- **Long recordings** (past 30 s) are decoded window by window (Whisper's long-form algorithm) in a thread
  of their own, and give the model up between decoding steps (``Transcriber``'s ``StepGate``) whenever
  short requests are waiting, once they have had it as long as a short batch takes (a running estimate, at
  least ``slice_ms``). Long recordings go in the order they arrived (the earliest deadline first: they share one
  ``--request-timeout``), so the earliest finishes in its own time instead of all of them timing out together when
  they are many; a later one waits while it decodes, short requests never do. Turns alternate while both
  kinds wait, so neither starves: under a steady stream of short requests each kind gets about half.
- **Bounds**: at most ``max_queue`` requests in flight (``QueueFull`` past it, with a retry hint); every job
  can be cancelled (the client went away, the request timed out): a waiting job is dropped, a long
  recording stops at its next decoding step.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import numpy as np

from whisper_lora.data.audio import N_SAMPLES, load_audio
from whisper_lora.inference.request import Request
from whisper_lora.inference.transcriber import Transcriber, Transcription
from whisper_lora.serving.memory import Releaser

log = logging.getLogger("whisper_lora")

SHORT = "short"  # the turn of the micro-batch worker


class QueueFull(Exception):
    """``max_queue`` requests are already in flight."""

    def __init__(self, limit: int, retry_after: int):
        super().__init__(f"the server is busy: {limit} requests are already queued; retry in {retry_after} s")
        self.limit, self.retry_after = limit, retry_after

    def __reduce__(self):  # crosses process boundaries (Ray replicas) with its own arguments
        return (type(self), (self.limit, self.retry_after))


class Cancelled(Exception):
    """The job was cancelled (client disconnected or request timed out) before it finished."""


@dataclass(eq=False)
class Job:
    """One request on its way through the scheduler."""

    request: Request  # with its audio as samples
    route_only: bool = False  # only where ``auto`` sends it (``Transcriber.route``), no decoding
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def long(self) -> bool:
        return len(self.request.audio) > N_SAMPLES

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop this job: dropped if it has not started, stopped at its next decoding step if it is long."""
        self._cancelled.set()


class _Gate:
    """The ``StepGate`` of one long job: the scheduler's ``should_yield`` and ``yield_turn`` for that job."""

    def __init__(self, scheduler: Scheduler, job: Job):
        self.scheduler, self.job = scheduler, job

    def should_yield(self) -> bool:
        return self.scheduler.should_yield(self.job)

    def wait(self) -> None:
        self.scheduler.yield_turn(self.job)


class Scheduler:
    """Serves ``Transcriber`` calls from many threads fairly; see the module docstring."""

    def __init__(
        self,
        transcriber: Transcriber,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 64,
        slice_ms: float = 200.0,
        reload_seconds: float | None = 2.0,
    ):
        self.transcriber = transcriber
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.slice, self.reload = slice_ms / 1000, reload_seconds
        self._cv = threading.Condition()
        self._short: deque[Job] = deque()  # short jobs waiting for a batch
        self._long_waiting: list[Job] = []  # long jobs waiting for their turn, earliest submitted first
        self._owner: Job | str | None = None  # who uses the model now: SHORT, a long Job, or nobody
        self._last: str = SHORT  # kind of the last turn (turns alternate while both kinds wait)
        self._turn_started = time.monotonic()
        self._in_flight = 0
        self._closed = False
        self._batch_seconds = 1.0  # running estimate of one short batch, for Retry-After
        self._release_memory = Releaser()  # hands freed memory back when the model goes idle (``memory.py``)
        # counters for /health and the load report
        self.batches = self.served = self.cancelled = self.rejected = self.long_yields = 0
        self._worker = threading.Thread(target=self._run_short, name="whisper-lora-batcher", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ public
    def submit(self, request: Request) -> Job:
        """Queue one request; its ``future`` gives the ``Transcription``. Raises ``QueueFull`` when full."""
        if not isinstance(request.audio, np.ndarray):  # a path: its length decides the kind of turn
            request = replace(request, audio=load_audio(request.audio))
        return self._queue(Job(request))

    def submit_route(self, audio: np.ndarray) -> Job:
        """Queue a routing question (its first 30 s): the ``future`` gives a ``RouteDecision``. It takes turns with
        long recordings as short requests do."""
        return self._queue(Job(Request(audio[:N_SAMPLES]), route_only=True))

    def _queue(self, job: Job) -> Job:
        with self._cv:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            if self._in_flight >= self.max_queue:
                self.rejected += 1
                raise QueueFull(self.max_queue, self.retry_after())
            self._in_flight += 1
            job.future.add_done_callback(self._finished)
            if job.long:
                threading.Thread(target=self._run_long, args=(job,), name="whisper-lora-long", daemon=True).start()
            else:
                self._short.append(job)
                self._cv.notify_all()
        return job

    def transcribe(self, request: Request, timeout: float | None = None) -> Transcription:
        """``submit`` and wait (tests, scripts); a timeout cancels the job."""
        job = self.submit(request)
        try:
            return job.future.result(timeout)
        except TimeoutError:
            job.cancel()
            raise

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the queue ahead, in batches, at the recent batch time."""
        return max(1, math.ceil(self._in_flight / max(self.max_batch, 1) * self._batch_seconds))

    def stats(self) -> dict:
        return {
            "in_flight": self._in_flight,
            "max_queue": self.max_queue,
            "batches": self.batches,
            "served": self.served,
            "cancelled": self.cancelled,
            "rejected": self.rejected,
            "long_yields": self.long_yields,
            "memory_releases": self._release_memory.count,
        }

    def healthy(self) -> bool:
        """Whether the micro-batch worker is alive (Ray's health check asks)."""
        return self._worker.is_alive()

    def should_yield(self, job: Job) -> bool:
        """Whether long ``job``, holding the model, should give it up now; raises ``Cancelled`` when it was."""
        if job.cancelled:
            raise Cancelled()
        held = time.monotonic() - self._turn_started
        # waiting short requests get the model once this decode has had as long as a short batch takes (at least
        # ``slice``): under a steady stream both kinds then get about half, short latency stays about twice alone
        return bool(self._short and held >= max(self.slice, self._batch_seconds))

    def yield_turn(self, job: Job) -> None:
        """Long ``job`` gives the model up, and returns once it is its turn again."""
        self.long_yields += 1
        self._release(job, again=True)
        self._take(job)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._worker.join(timeout=5)

    # ------------------------------------------------------------------ turns
    def _finished(self, future: Future) -> None:
        with self._cv:
            self._in_flight -= 1
            if future.exception() is not None and isinstance(future.exception(), Cancelled):
                self.cancelled += 1

    def _next(self) -> Job | str | None:
        """Whose turn it is when the model is free: alternate between short batches and long jobs."""
        short = bool(self._short)
        long = self._long_waiting[0] if self._long_waiting else None
        if short and long is not None:
            return long if self._last == SHORT else SHORT
        return SHORT if short else long

    def _take(self, who: Job | str) -> None:
        """Block until it is ``who``'s turn, then own the model (a cancelled long job raises ``Cancelled``)."""
        with self._cv:
            while not (self._owner is None and self._next() is who):
                if isinstance(who, Job) and who.cancelled:
                    self._long_waiting.remove(who)
                    self._cv.notify_all()
                    raise Cancelled()
                if who == SHORT and (self._closed or not self._short):
                    return
                self._cv.wait(0.05)  # a timeout, so cancelled jobs notice
            if isinstance(who, Job):
                self._long_waiting.pop(0)
            self._owner, self._turn_started = who, time.monotonic()
            self._last = SHORT if who == SHORT else "long"
        if self.reload is not None:  # what decodes next is what is on disk (and what /health shows)
            try:
                self.transcriber.refresh_adapters(self.reload)
            except Exception:  # noqa: BLE001 - a registry that cannot be read must not stop serving
                log.exception("re-reading the adapter registry failed")

    def _wait_long(self, job: Job) -> None:
        """Queue long ``job`` for its turn, by arrival (call with ``_cv`` held)."""
        self._long_waiting.append(job)
        self._long_waiting.sort(key=lambda j: j.submitted)

    def _release(self, who: Job | str, again: bool = False) -> None:
        with self._cv:
            if self._owner is who:
                self._owner = None
            if again and isinstance(who, Job):
                self._wait_long(who)  # in order of arrival: an earlier one keeps its place ahead
            self._cv.notify_all()
            idle = self._owner is None and not self._short and not self._long_waiting
        if idle:  # nothing waits: hand what the finished work freed back to the system
            self._release_memory()

    # ------------------------------------------------------------------ work
    def _run_long(self, job: Job) -> None:
        with self._cv:
            self._wait_long(job)
            self._cv.notify_all()
        try:
            self._take(job)
        except Cancelled as e:
            job.future.set_exception(e)
            return
        try:
            result = self.transcriber.transcribe_requests([job.request], gate=_Gate(self, job))[0]
        except BaseException as e:  # noqa: BLE001 - the request gets the error, the server goes on
            job.future.set_exception(e)
        else:
            self.served += 1
            job.future.set_result(result)
        finally:
            self._release(job)

    def _run_short(self) -> None:
        while True:
            with self._cv:
                while not self._short and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                deadline = self._short[0].submitted + self.max_wait  # wait a little for company
                while len(self._short) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            self._take(SHORT)
            with self._cv:
                if self._owner != SHORT:  # closed, or the queue emptied (every job cancelled)
                    continue
                batch = self._pop_batch()
            started = time.monotonic()
            try:
                self._decode_kinds(batch)
            finally:
                if batch:
                    self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.monotonic() - started)
                self._release(SHORT)

    def _decode_kinds(self, batch: list[Job], nested: bool = False) -> None:
        for route_only in (True, False):  # routing questions, then transcriptions
            group = [j for j in batch if j.route_only == route_only]
            if group:
                self._decode(group, nested)

    def _decode(self, batch: list[Job], nested: bool = False) -> None:
        """Decode one short batch. Each answer is given as soon as it is final; between two temperatures of the
        batch's fallback, short requests that arrived meanwhile are decoded first (``_BatchGate``; not within such
        a nested batch)."""

        def settle(k: int, result) -> None:
            if not batch[k].future.done():
                batch[k].future.set_result(result)
                self.served += 1

        try:
            if batch[0].route_only:
                results = self.transcriber.route([j.request.audio for j in batch])
            else:
                gate = None if nested else _BatchGate(self)
                results = self.transcriber.transcribe_requests([j.request for j in batch], gate=gate, done=settle)
            self.batches += 1
        except Exception as e:  # noqa: BLE001 - isolate the failing request
            left = [j for j in batch if not j.future.done()]
            if len(batch) == 1:
                if left:
                    batch[0].future.set_exception(e)
                return
            for j in left:
                self._decode([j], nested)
            return
        for k, res in enumerate(results):
            settle(k, res)

    def _pop_batch(self) -> list[Job]:
        """Up to ``max_batch`` waiting short jobs, the cancelled ones dropped (call with ``_cv`` held)."""
        batch = []
        while self._short and len(batch) < self.max_batch:
            job = self._short.popleft()
            if job.cancelled:
                job.future.set_exception(Cancelled())
            else:
                batch.append(job)
        return batch

    def _serve_waiting(self) -> None:
        """Decode the short requests waiting now (one batch), in this thread, while a batch's fallback pauses."""
        with self._cv:
            batch = self._pop_batch()
        self._decode_kinds(batch, nested=True)


class _BatchGate:
    """The ``StepGate`` of a short batch between two temperatures of its fallback (looping or unlikely rows,
    seconds of work): short requests waiting then are decoded first, so they do not queue behind it."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    def should_yield(self) -> bool:
        return bool(self.scheduler._short)

    def wait(self) -> None:
        self.scheduler._serve_waiting()
