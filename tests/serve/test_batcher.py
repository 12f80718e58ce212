"""The dynamic batcher on its own: which requests share a model call, and the queue bound."""

from __future__ import annotations

import asyncio
import threading

import pytest

from seqformer.serve.batcher import Batcher, Overloaded


class Recorder:
    """A fake model: echoes texts with the options, recording every call's texts."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, texts: list[str], options) -> list:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        self.calls.append(list(texts))
        return [f"{t}|{options}" for t in texts]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def occupy(b: Batcher, rec: Recorder, text: str, options) -> asyncio.Future:
    """Submit ``text`` and wait until the model thread holds it (``rec`` gated): the request's future."""
    future = asyncio.ensure_future(b.submit([text], options))
    while not rec.entered.is_set():
        await asyncio.sleep(0.005)
    return future


async def occupy_streams(b: Batcher, texts: list[str], options) -> list[asyncio.Future]:
    """Submit one request per text and wait until each is a batch of its own being computed (``max_batch=1``)."""
    futures = [asyncio.ensure_future(b.submit([t], options)) for t in texts]
    while len(b._batches) < len(texts):
        await asyncio.sleep(0.005)
    return futures


def test_concurrent_requests_share_one_call_and_keep_their_order():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch=32, window_s=0.05, max_queue=64)
        b.start()
        out = await asyncio.gather(*(b.submit([f"s{i}", f"t{i}"], "beam") for i in range(6)))
        await b.stop()
        return out, b.stats

    out, stats = run(main())
    assert out == [[f"s{i}|beam", f"t{i}|beam"] for i in range(6)]
    assert len(rec.calls) == 1 and stats.largest_batch == 6 and stats.texts == 12


def test_max_batch_splits_and_options_never_mix():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch=3, window_s=0.05, max_queue=64)
        b.start()
        jobs = [b.submit([f"a{i}"], "A") for i in range(5)] + [b.submit([f"b{i}"], "B") for i in range(2)]
        out = await asyncio.gather(*jobs)
        await b.stop()
        return out

    out = run(main())
    assert out[:5] == [[f"a{i}|A"] for i in range(5)] and out[5:] == [["b0|B"], ["b1|B"]]
    assert all(len(c) <= 3 for c in rec.calls)
    assert all(len({t[0] for t in c}) == 1 for c in rec.calls)  # one option set per call
    assert sorted(len(c) for c in rec.calls) == [2, 2, 3]


def test_full_queue_is_refused_at_once():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = Batcher(rec, max_batch=1, window_s=0.0, max_queue=2)
        b.start()
        first = await occupy(b, rec, "busy", "A")
        queued = [asyncio.ensure_future(b.submit([f"q{i}"], "A")) for i in range(2)]
        await asyncio.sleep(0.01)
        assert b.queued == 2
        with pytest.raises(Overloaded):
            await b.submit(["one too many"], "A")
        gate.set()
        out = await asyncio.gather(first, *queued)
        await b.stop()
        return out, b.queued

    out, left = run(main())
    assert out == [["busy|A"], ["q0|A"], ["q1|A"]] and left == 0


def test_queue_and_batches_count_what_requests_cost_not_their_texts():
    """A text of many sentences is many model inputs: it fills the queue and a batch like that many texts."""
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = Batcher(rec, max_batch=4, window_s=0.05, max_queue=6)
        b.start()
        first = await occupy(b, rec, "busy", "A")
        long_a = asyncio.ensure_future(b.submit(["long a"], "A", cost=3))
        long_b = asyncio.ensure_future(b.submit(["long b"], "A", cost=3))
        await asyncio.sleep(0.01)
        assert b.queued == 6  # two texts, six sentences
        with pytest.raises(Overloaded, match="adds 1"):
            await b.submit(["short"], "A")  # was: admitted (2 texts queued of 6)
        gate.set()
        out = await asyncio.gather(first, long_a, long_b)
        await b.stop()
        return out

    out = run(main())
    assert out == [["busy|A"], ["long a|A"], ["long b|A"]]
    assert rec.calls == [["busy"], ["long a"], ["long b"]]  # 3 + 3 > max_batch 4: was one call of both


def test_a_request_larger_than_the_queue_runs_when_nothing_waits():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch=4, window_s=0.0, max_queue=2)
        b.start()
        out = await b.submit(["a text of ten sentences"], "A", cost=10)
        await b.stop()
        return out

    assert run(main()) == ["a text of ten sentences|A"]


def test_model_error_reaches_every_request_of_the_batch():
    calls = []

    def broken(texts, options):
        calls.append(list(texts))
        raise ValueError("boom")

    async def main():
        b = Batcher(broken, max_batch=8, window_s=0.02, max_queue=8)
        b.start()
        out = await asyncio.gather(b.submit(["a"], 1), b.submit(["b"], 1), return_exceptions=True)
        await b.stop()
        return out

    errors = run(main())
    assert calls == [["a", "b"]]  # one model call for the batch: its one error answers both requests
    assert [(type(e), str(e)) for e in errors] == [(ValueError, "boom")] * 2


def test_stop_answers_the_batch_being_computed_and_the_queue():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = Batcher(rec, max_batch=1, window_s=0.0, max_queue=8)
        b.start()
        running = await occupy(b, rec, "a", "beam")
        queued = asyncio.ensure_future(b.submit(["b"], "beam"))
        await asyncio.sleep(0.01)
        await b.stop()
        gate.set()
        return await asyncio.gather(running, queued, return_exceptions=True)

    running, queued = run(main())
    # was: "a" never answered (its future left pending when the loop was cancelled mid-batch)
    assert isinstance(running, Overloaded) and isinstance(queued, Overloaded)


class Meeting:
    """A fake model whose calls wait for each other: ``parties`` calls must be inside at once to return."""

    def __init__(self, parties: int, timeout_s: float) -> None:
        self.barrier = threading.Barrier(parties, timeout=timeout_s)
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str], options) -> list:
        self.barrier.wait()  # BrokenBarrierError unless enough calls run at the same time
        self.calls.append(list(texts))
        return [f"{t}|{options}" for t in texts]


@pytest.mark.parametrize("streams", [1, 2])
def test_streams_compute_that_many_batches_at_once(streams):
    model = Meeting(parties=2, timeout_s=1.0)

    async def main():
        b = Batcher(model, max_batch=1, window_s=0.0, max_queue=8, streams=streams)
        b.start()
        out = await asyncio.gather(b.submit(["a"], "A"), b.submit(["b"], "A"), return_exceptions=True)
        await b.stop()
        return out

    out = run(main())
    if streams == 2:  # two one-request batches met inside the model
        assert out == [["a|A"], ["b|A"]]
    else:  # one stream: the second batch waits for the first, which waits for a second call in vain
        assert all(isinstance(e, threading.BrokenBarrierError) for e in out)


def test_queue_fills_while_every_stream_is_busy():
    gate = threading.Event()
    entered: list[str] = []

    def model(texts, options):
        entered.append(texts[0])
        if texts[0].startswith("busy"):
            gate.wait(5)
        return [f"{t}|{options}" for t in texts]

    async def main():
        b = Batcher(model, max_batch=4, window_s=0.0, max_queue=16, streams=2)
        b.start()
        busy = []
        for i in range(2):  # one batch on each stream
            busy.append(asyncio.ensure_future(b.submit([f"busy{i}"], "A")))
            while len(entered) <= i:
                await asyncio.sleep(0.005)
        waiting = [asyncio.ensure_future(b.submit([f"w{i}"], "A")) for i in range(3)]
        await asyncio.sleep(0.05)
        assert b.queued == 3 and len(entered) == 2  # no third stream: they wait together
        gate.set()
        out = await asyncio.gather(*busy, *waiting)
        await b.stop()
        return out, b.stats

    out, stats = run(main())
    assert out == [["busy0|A"], ["busy1|A"], ["w0|A"], ["w1|A"], ["w2|A"]]
    assert stats.batches == 3 and stats.largest_batch == 3  # the three that waited ran as one batch


def test_stop_answers_every_running_batch():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = Batcher(rec, max_batch=1, window_s=0.0, max_queue=8, streams=2)
        b.start()
        running = await occupy_streams(b, ["a", "b"], "A")
        await b.stop()
        gate.set()
        return await asyncio.gather(*running, return_exceptions=True)

    assert all(isinstance(e, Overloaded) for e in run(main()))


def test_drain_waits_for_every_running_batch():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = Batcher(rec, max_batch=1, window_s=0.0, max_queue=8, streams=2)
        b.start()
        running = await occupy_streams(b, ["a", "b"], "A")
        b.close()
        asyncio.get_running_loop().call_later(0.05, gate.set)
        await b.drain(5)
        assert all(f.done() for f in running)  # drain returned only once both batches had answered
        out = await asyncio.gather(*running)
        await b.stop()
        return out

    assert run(main()) == [["a|A"], ["b|A"]]


def test_streams_below_one_are_refused():
    with pytest.raises(ValueError, match="streams must be >= 1, found 0"):
        Batcher(Recorder(), streams=0)


def test_a_model_giving_the_wrong_number_of_results_fails_every_request():
    async def main():
        b = Batcher(lambda texts, options: texts[:-1], max_batch=8, window_s=0.02, max_queue=8)
        b.start()
        out = await asyncio.gather(b.submit(["a"], "A"), b.submit(["b", "c"], "A"), return_exceptions=True)
        await b.stop()
        return out

    # was: "a" got ["a"], and "b", "c" got ["b"], one result for two texts
    assert all(isinstance(e, RuntimeError) and "2 results for 3 texts" in str(e) for e in run(main()))
