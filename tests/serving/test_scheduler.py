"""The scheduler in process: long recordings interleaved with short clips give the answers they give alone."""

import time

import numpy as np
import pytest

from tests.inference.test_transcriber import AUDIO
from whisper_lora.inference.longform import DecodeOptions
from whisper_lora.inference.request import Request
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.serving.scheduler import Cancelled, QueueFull, Scheduler

LONG = np.concatenate([AUDIO[0]] * 6)  # about 43 s: two windows or more, seconds on the tiny model
SHORT = [(AUDIO[1], "cs", "cs"), (AUDIO[2], "en", None), (AUDIO[3], "sw", "sw"), (AUDIO[4], "auto", "ary")]


@pytest.fixture(scope="module", params=["routed", "hotswap"])
def transcriber(request, tiny_dir, tiny_registry):
    return Transcriber(
        str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8, mode=request.param
    )


def test_short_requests_are_served_between_a_long_recordings_steps(transcriber):
    long = np.concatenate([LONG] * 4)  # about 170 s: a few seconds on the tiny model
    alone_long = transcriber.transcribe(long, "sw")
    alone_base_long = transcriber.transcribe(long, "en", adapter=None)
    alone_short = [transcriber.transcribe(a, lang, adapter=ad).text for a, lang, ad in SHORT]
    scheduler = Scheduler(transcriber, max_batch=4, max_wait_ms=5, slice_ms=20)
    try:
        finished = {}
        long_job = scheduler.submit(Request(long, "sw", "sw"))
        base_job = scheduler.submit(Request(long, "en", None))  # a second long one, on the base: it waits its turn
        long_job.future.add_done_callback(lambda _: finished.setdefault("long", time.monotonic()))
        base_job.future.add_done_callback(lambda _: finished.setdefault("base", time.monotonic()))
        time.sleep(0.3)  # the long recordings are decoding
        shorts = []
        for k in range(8):
            audio, lang, adapter = SHORT[k % len(SHORT)]
            shorts.append(scheduler.submit(Request(audio, lang, adapter)))
            shorts[-1].future.add_done_callback(lambda _, k=k: finished.setdefault(k, time.monotonic()))
            time.sleep(0.05)
        short_texts = [j.future.result(120).text for j in shorts]
        short_done = time.monotonic()
        assert long_job.future.result(300).text == alone_long.text
        assert long_job.future.result().segments == alone_long.segments
        assert base_job.future.result(300).text == alone_base_long.text
        assert short_texts == [alone_short[k % len(SHORT)] for k in range(8)]
        # served between the long recordings' decoding steps: the first short answers come before the first long
        # recording is done, and all of them before the second (long recordings go in order of arrival)
        assert min(finished[k] for k in range(8)) < finished["long"], "the short requests waited for a recording"
        assert short_done < finished["base"] and finished["long"] < finished["base"]
        stats = scheduler.stats()
        assert stats["long_yields"] > 0 and stats["served"] == 10 and stats["in_flight"] == 0
    finally:
        scheduler.close()


def test_a_cancelled_long_recording_stops_and_the_next_request_is_right(transcriber):
    scheduler = Scheduler(transcriber, max_wait_ms=5)
    try:
        job = scheduler.submit(Request(LONG, "sw", "sw"))
        time.sleep(0.5)
        started = time.monotonic()
        job.cancel()
        with pytest.raises(Cancelled):
            job.future.result(30)
        assert time.monotonic() - started < 10  # stopped at a decoding step, not at the end of the recording
        audio, lang, adapter = SHORT[0]
        assert (
            scheduler.transcribe(Request(audio, lang, adapter), timeout=60).text
            == transcriber.transcribe(audio, lang).text
        )
        assert scheduler.stats()["cancelled"] == 1
    finally:
        scheduler.close()


def test_a_full_queue_refuses_with_a_retry_hint(transcriber):
    scheduler = Scheduler(transcriber, max_queue=1)
    try:
        job = scheduler.submit(Request(LONG, "sw", "sw"))
        with pytest.raises(QueueFull) as e:
            scheduler.submit(Request(AUDIO[1], "cs", "cs"))
        assert e.value.retry_after >= 1 and "1 requests are already queued" in str(e.value)
        job.cancel()
        with pytest.raises(Cancelled):
            job.future.result(30)
        assert scheduler.transcribe(Request(AUDIO[1], "cs", "cs"), timeout=60).adapter == "cs"  # room again
        assert scheduler.stats()["rejected"] == 1
    finally:
        scheduler.close()


def test_routing_questions_take_turns_with_a_long_recording(transcriber):
    """Ray Serve's ingress asks a replica where ``auto`` audio goes before it picks the replica for the adapter;
    that question is a short job: answered between a long recording's decoding steps, equal to ``route()``."""
    want = transcriber.route([a for a, _, _ in SHORT])
    scheduler = Scheduler(transcriber, max_wait_ms=5, slice_ms=20)
    try:
        finished = {}
        long_job = scheduler.submit(Request(np.concatenate([LONG] * 4), "sw", "sw"))
        long_job.future.add_done_callback(lambda _: finished.setdefault("long", time.monotonic()))
        time.sleep(0.3)  # the long recording is decoding
        jobs = [scheduler.submit_route(a) for a, _, _ in SHORT]
        got = [j.future.result(120) for j in jobs]
        routed = time.monotonic()
        assert [(g.language, g.adapter, g.route) for g in got] == [(w.language, w.adapter, w.route) for w in want]
        assert [g.probability for g in got] == pytest.approx([w.probability for w in want], rel=1e-4)  # batch size
        long_job.future.result(600)
        assert routed < finished["long"], "the routing questions waited for the long recording"
        assert scheduler.stats()["long_yields"] > 0 and scheduler.stats()["in_flight"] == 0
    finally:
        scheduler.close()


# every text compresses past 1.01: this request falls back through all six temperatures (seconds of work)
FALLS_BACK = DecodeOptions(compression_ratio_threshold=1.01, stop_loops_early=False)


def test_short_requests_are_served_between_the_temperatures_of_a_batch_that_falls_back(transcriber):
    audio = np.concatenate([AUDIO[0]] * 3)  # about 22 s: short, and every fallback step decodes a full window
    looping = Request(audio, "sw", "sw", options=FALLS_BACK)
    alone_looping = transcriber.transcribe_requests([looping])[0]
    alone_short = [transcriber.transcribe(a, lang, adapter=ad) for a, lang, ad in SHORT]
    scheduler = Scheduler(transcriber, max_batch=1, max_wait_ms=1)  # a batch each: the others wait in the queue
    try:
        finished = {}
        jobs = [scheduler.submit(looping)] + [scheduler.submit(Request(a, lang, ad)) for a, lang, ad in SHORT]
        for k, job in enumerate(jobs):
            job.future.add_done_callback(lambda _, k=k: finished.setdefault(k, time.monotonic()))
        results = [j.future.result(120) for j in jobs]
        assert results[0] == alone_looping
        assert results[1:] == alone_short
        # before: each waited for the six temperatures of the one ahead of it
        assert max(finished[k] for k in range(1, len(jobs))) < finished[0], finished
        assert scheduler.stats()["served"] == len(jobs)
    finally:
        scheduler.close()


class _ServeBetweenTokens:
    """A ``StepGate`` that, each time it is asked, decodes another request in between (as the scheduler's batch
    gate does with waiting requests), and counts how often."""

    def __init__(self, transcriber, request):
        self.transcriber, self.request, self.results = transcriber, request, []

    def should_yield(self):
        return True

    def wait(self):
        self.results.append(self.transcriber.transcribe_requests([self.request])[0])


@pytest.fixture(scope="module")
def row_indexed(tiny_dir, tiny_registry):
    """Routed with row-indexed LoRA (the default on a GPU): its contexts nest while a decode is paused."""
    return Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8, row_indexed=True)


def test_a_fallback_step_gives_the_model_up_at_every_token_and_both_answers_stay_right(transcriber):
    _served_between_tokens(transcriber)


def test_row_indexed_contexts_nest_when_a_fallback_step_gives_the_model_up(row_indexed):
    _served_between_tokens(row_indexed)


def _served_between_tokens(transcriber):
    audio = np.concatenate([AUDIO[0]] * 3)
    looping = Request(audio, "sw", "sw", options=FALLS_BACK)
    other = Request(*SHORT[0])  # another adapter (cs) in between ... and the base below
    alone_looping = transcriber.transcribe_requests([looping])[0]
    alone_other = transcriber.transcribe_requests([other])[0]
    gate = _ServeBetweenTokens(transcriber, other)
    assert transcriber.transcribe_requests([looping], gate=gate)[0] == alone_looping
    temperatures = len(FALLS_BACK.temperature)
    # once before each fallback step, and at the decoding steps of those steps (up to 8 tokens each)
    assert len(gate.results) > 2 * (temperatures - 1), len(gate.results)
    assert all(r == alone_other for r in gate.results)
    gate = _ServeBetweenTokens(transcriber, Request(SHORT[1][0], "en", None))  # the base in between
    assert transcriber.transcribe_requests([looping], gate=gate)[0] == alone_looping


class _Stub:
    """A transcriber whose second request needs the fallback: the first is final before it (``done``)."""

    def refresh_adapters(self, seconds):
        pass

    def transcribe_requests(self, requests, gate=None, done=None):
        results = [f"text {k}" for k in range(len(requests))]
        done(0, results[0])
        time.sleep(0.5)  # the second row's fallback
        return results


def test_a_batchs_rows_are_answered_as_soon_as_they_are_final():
    scheduler = Scheduler(_Stub(), max_batch=2, max_wait_ms=200, reload_seconds=None)
    try:
        first, second = (scheduler.submit(Request(AUDIO[k][:16000], "sw")) for k in range(2))
        assert first.future.result(5) == "text 0"
        assert not second.future.done()  # the first did not wait for it
        assert second.future.result(5) == "text 1"
        assert scheduler.stats()["served"] == 2 and scheduler.stats()["batches"] == 1
    finally:
        scheduler.close()
