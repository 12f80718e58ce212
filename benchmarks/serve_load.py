"""Load test of ``seqformer serve`` on loopback: dynamic batching against one request at a time.

    python benchmarks/serve_load.py --model src/seqformer/models/en-fr            # 400 requests per mode
    python benchmarks/serve_load.py --model DIR --requests 40 --concurrency 8   # smoke run
    python benchmarks/serve_load.py --streams 2 --rounds 2    # also batches on two streams (--streams 2)

For each mode the script starts its own server (``--max-batch N`` and ``--max-batch 1``;
with ``--streams S`` also ``--max-batch N --streams S``) on a free 127.0.0.1 port, sends a
fixed number of single-sentence requests from ``--concurrency`` concurrent clients, stops
the server, and prints requests/s, latency percentiles, the mean batch size the server formed
and the error count (which must be 0; the exit status is 1 otherwise). The peer it compares
with is the same server with batching off (and, for streams, batching on one stream). With
``--rounds R`` every mode runs R times, in reverse order every other round, so that the
machine's drift slows them alike; the table pools each mode's rounds. Bounded: a fixed
request count, a per-request timeout and a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

SENTENCES = [
    "I like tea.", "Where is the station?", "She reads a book every evening.", "We are going home now.",
    "The weather is nice today.", "Can you help me, please?", "He forgot his keys at the office again.",
    "My brother lives in a small village near the sea.", "Thank you very much.", "Tom doesn't like cheese.",
    "Is this seat free?", "I have never seen such a beautiful garden in my whole life.",
    "The children are playing in the park.", "What time does the museum open tomorrow morning?",
    "I'm tired.", "They bought a new car last week.", "Please close the window before you leave.",
    "Do you speak French?", "The cat is sleeping on the sofa.", "It started to rain just as we arrived.",
]


@dataclass
class Run:
    mode: str
    max_batch: int
    streams: int
    sent: int
    errors: int
    seconds: float
    latencies: list[float]
    batches: int  # model calls the server made for these requests
    requests: int  # requests the server counted in them

    @property
    def mean_batch(self) -> float:
        return self.requests / max(1, self.batches)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, max_batch: int, streams: int, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "seqformer.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-batch", str(max_batch), "--streams", str(streams), "--batch-window-ms", str(args.window_ms),
           "--no-access-log", "--threads", str(args.threads)]
    if args.model:
        cmd += ["--model", args.model]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


async def load(url: str, args: argparse.Namespace) -> tuple[int, int, float, list[float]]:
    """Send args.requests requests from args.concurrency clients; (sent, errors, seconds, latencies)."""
    latencies: list[float] = []
    errors = sent = 0
    next_index = 0
    deadline = time.monotonic() + args.max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors, sent, next_index
        while next_index < args.requests and time.monotonic() < deadline:
            i = next_index
            next_index += 1
            body = {"text": SENTENCES[i % len(SENTENCES)], "beam_size": args.beam_size}
            start = time.perf_counter()
            try:
                reply = await http.post(url + "/translate", json=body)
                ok = reply.status_code == 200 and reply.json()["results"][0]["translations"]
            except (httpx.HTTPError, ValueError, KeyError, IndexError):
                ok = False
            latencies.append(time.perf_counter() - start)
            sent += 1
            errors += not ok

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(args.concurrency)))
        return sent, errors, time.perf_counter() - start, latencies


def measure(args: argparse.Namespace, mode: str, max_batch: int, streams: int, log) -> Run:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, max_batch, streams, port, log)
    try:
        wait_ready(url, proc, args.startup_timeout)
        for text in SENTENCES[:2]:  # warm-up, not timed
            httpx.post(url + "/translate", json={"text": text}, timeout=args.timeout)
        before = httpx.get(url + "/health").json()
        sent, errors, seconds, latencies = asyncio.run(load(url, args))
        after = httpx.get(url + "/health").json()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return Run(mode, max_batch, streams, sent, errors, seconds, latencies, after["batches"] - before["batches"],
               after["requests"] - before["requests"])


def pooled(runs: list[Run]) -> Run:
    """One mode's rounds as one run: all its requests over all its seconds, every latency, every batch."""
    first = runs[0]
    return Run(first.mode, first.max_batch, first.streams, sum(r.sent for r in runs), sum(r.errors for r in runs),
               sum(r.seconds for r in runs), [x for r in runs for x in r.latencies], sum(r.batches for r in runs),
               sum(r.requests for r in runs))


def report(runs: list[Run], args: argparse.Namespace) -> None:
    print(f"{args.requests} requests per mode and round, {args.rounds} round(s), {args.concurrency} concurrent "
          f"clients, beam {args.beam_size}, {args.threads} torch threads, window {args.window_ms} ms, loopback")
    print(f"{'mode':<18} {'max_batch':>9} {'streams':>7} {'sent':>5} {'errors':>6} {'req/s':>8} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'mean batch':>10}")
    for r in runs:
        print(f"{r.mode:<18} {r.max_batch:>9} {r.streams:>7} {r.sent:>5} {r.errors:>6} {r.sent / r.seconds:>8.1f} "
              f"{r.percentile(50):>8.1f} {r.percentile(95):>8.1f} {r.percentile(99):>8.1f} {r.mean_batch:>10.2f}")
    rate = {r.mode: r.sent / r.seconds for r in runs if r.sent}
    for a, b in (("batched", "one-at-a-time"), ("batched, streams", "batched"), ("batched, streams", "one-at-a-time")):
        if a in rate and b in rate:
            print(f"throughput, {a} vs {b}: {rate[a] / rate[b]:.2f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--requests", type=int, default=400, help="requests per mode")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    p.add_argument("--max-batch", type=int, default=32, help="batched mode's --max-batch")
    p.add_argument("--streams", type=int, default=1, help="also run the batched server with this --streams (> 1)")
    p.add_argument("--rounds", type=int, default=1, help="run every mode this many times, alternating the order")
    p.add_argument("--window-ms", type=float, default=5.0, help="batching window")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)), help="torch threads of the server")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop sending after this long, per mode")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--only", choices=("batched", "single"), help="run one mode only")
    args = p.parse_args()
    if args.streams < 1 or args.rounds < 1:
        p.error(f"--streams and --rounds: expected >= 1, found {args.streams} and {args.rounds}")
    modes = [("batched", args.max_batch, 1), ("one-at-a-time", 1, 1)]
    if args.only:
        modes = modes[:1] if args.only == "batched" else modes[1:]
    if args.streams > 1 and args.only != "single":
        modes.insert(1, ("batched, streams", args.max_batch, args.streams))
    rounds: dict[str, list[Run]] = {mode: [] for mode, _, _ in modes}
    with tempfile.NamedTemporaryFile("w+", prefix="serve_load_", suffix=".log", delete=False) as log:
        for r in range(args.rounds):
            for mode, mb, streams in modes if r % 2 == 0 else modes[::-1]:
                rounds[mode].append(measure(args, mode, mb, streams, log))
                last = rounds[mode][-1]
                print(f"round {r + 1}: {mode}: {last.sent / last.seconds:.1f} requests/s", flush=True)
    runs = [pooled(rounds[mode]) for mode, _, _ in modes]
    report(runs, args)
    print(f"server log: {Path(log.name)}")
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
