"""Micro-batching: concurrent requests that arrive together share one mixed-language generate call."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from whisper_lora.inference.longform import DecodeOptions
from whisper_lora.inference.transcriber import Transcriber, Transcription


@dataclass
class _Request:
    audio: np.ndarray
    language: str
    adapter: str | None
    timestamps: bool = False
    options: DecodeOptions | None = None
    future: Future = field(default_factory=Future)

    @property
    def kind(self) -> tuple:
        return (self.timestamps, self.options)


class MicroBatcher:
    """Collects requests for up to ``max_wait_ms`` (or ``max_batch`` of them) and decodes them together.

    Each request keeps its own language and adapter (peft mixed batches), so its result equals
    an isolated call. Requests asking for timestamps or other decoding options are decoded with
    those that ask for the same. If a batch fails, its requests are retried one by one, so one bad
    input never fails the others.
    """

    def __init__(self, transcriber: Transcriber, max_batch: int = 8, max_wait_ms: float = 10.0):
        self.transcriber, self.max_batch, self.max_wait = transcriber, max_batch, max_wait_ms / 1000
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="whisper-lora-batcher", daemon=True)
        self._worker.start()
        self.batches = 0  # decode calls made, for the load report
        self.served = 0

    def submit(
        self,
        audio: np.ndarray,
        language: str,
        adapter: str | None,
        timeout: float | None = None,
        timestamps: bool = False,
        options: DecodeOptions | None = None,
    ) -> Transcription:
        req = _Request(audio, language, adapter, timestamps, options)
        self._queue.put(req)
        return req.future.result(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            kinds: dict[tuple, list[_Request]] = {}
            for r in batch:
                kinds.setdefault(r.kind, []).append(r)
            for group in kinds.values():
                self._decode(group)

    def _decode(self, batch: list[_Request]) -> None:
        try:
            results = self.transcriber.transcribe_batch(
                [r.audio for r in batch],
                [r.language for r in batch],
                adapter=[r.adapter for r in batch],
                timestamps=batch[0].timestamps,
                options=batch[0].options,
            )
            self.batches += 1
        except Exception as e:  # noqa: BLE001 - isolate the failing request
            if len(batch) == 1:
                batch[0].future.set_exception(e)
                return
            for r in batch:
                self._decode([r])
            return
        self.served += len(batch)
        for r, res in zip(batch, results, strict=True):
            r.future.set_result(res)
