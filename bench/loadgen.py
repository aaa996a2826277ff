"""Load generators: wrk (closed loop, for throughput: Postroom and baselines b, c, e alike)
and a small asyncio HTTP/1.1 client (open loop at a fixed rate, for end-to-end latency;
and the pull + ack loops of subscriber-id consumers)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA = Path(__file__).with_name("lua") / "request.lua"


def run_wrk(wrk: str, base_url: str, path: str, *, method: str = "POST", auth: str = "", body: bytes | None = None,
            connections: int = 50, threads: int = 2, duration: float = 10.0, random_before: int = 0,
            timeout: float = 10.0) -> dict[str, Any]:
    """Run wrk against ``base_url + path``; return counts, rates and latency percentiles (ms).

    ``ok`` counts 2xx/3xx answers (wrk's "Non-2xx or 3xx" are ``status_errors``); for a send
    endpoint every 2xx is a 202, so ``ok_per_s`` is the accepted rate.
    """
    env = dict(os.environ, BENCH_METHOD=method, BENCH_PATH=path, BENCH_AUTH=auth,
               BENCH_RANDOM_BEFORE=str(random_before))
    body_file = None
    if body is not None:
        fd, body_file = tempfile.mkstemp(prefix="bench-body-", suffix=".json.tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        env["BENCH_BODY_FILE"] = body_file
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", f"--timeout={timeout:g}s",
            "-s", str(LUA), base_url.rstrip("/") + "/"]
    # wrk takes the URL's path from the script's request; the URL only names host and port.
    started = time.time()
    try:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60)
    finally:
        if body_file:
            os.unlink(body_file)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    raw = json.loads(line.split(" ", 1)[1])
    seconds = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["status_errors"]
    lat = {k: v / 1000.0 for k, v in raw["lat_us"].items()}
    return {
        "started": started,
        "seconds": seconds,
        "requests": raw["requests"],
        "ok": ok,
        "non_2xx": raw["status_errors"],
        "socket_errors": raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"],
        "req_per_s": raw["requests"] / seconds,
        "ok_per_s": ok / seconds,
        "latency_ms": lat,
        "connections": connections,
    }


# ------------------------------------------------------------------- asyncio HTTP client


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes | None = None) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        length = 0
        close = False
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
            raise HttpError("server closed the connection")
        return status, payload

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


@dataclass
class Sample:
    scheduled: float  # wall clock (time.time()) the send was due: open-loop start time
    sent: float
    done: float
    status: int
    message_id: str | None


async def open_loop(host: str, port: int, path: str, headers: dict[str, str], body: bytes, rate: float,
                    duration: float, max_connections: int = 256) -> list[Sample]:
    """Send ``rate`` requests per second for ``duration`` seconds, whatever the answers take.

    Latency counts from the time each request was *due* (no coordinated omission): a
    request that waits for a free connection is late from its due time on.
    """
    idle: list[Connection] = []
    opened = 0
    samples: list[Sample] = []
    tasks: set[asyncio.Task] = set()
    slots = asyncio.Semaphore(max_connections)

    async def one(due: float) -> None:
        nonlocal opened
        async with slots:
            conn = idle.pop() if idle else None
            if conn is None:
                conn = await Connection.open(host, port)
                opened += 1
            sent = time.time()
            try:
                status, payload = await asyncio.wait_for(conn.request("POST", path, headers, body), 15)
            except (HttpError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                samples.append(Sample(due, sent, time.time(), 0, None))
                conn.close()
                return
            done = time.time()
            message_id = None
            if status == 202:
                message_id = json.loads(payload)["id"]
            samples.append(Sample(due, sent, done, status, message_id))
            idle.append(conn)

    start = time.time() + 0.05
    total = int(rate * duration)
    for i in range(total):
        due = start + i / rate
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    lost = total - len(samples)
    for _ in range(lost):  # still unanswered: count them as failed, due at the end
        samples.append(Sample(start + duration, time.time(), time.time(), 0, None))
    for conn in idle:
        conn.close()
    return samples


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (p in 0..100); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]
