"""Subscriber ids under load: figures for the subscriptions note (not assertions).

    python -m bench.subscriptions [--db sqlite|postgres] [--posts 2000] [--backlog 2000]
                                  [--clients 16] [--web-processes 2] [--threads 8] [--work-ms 0,2]

On services it starts itself (bench/services.py: a private RabbitMQ node on free ports,
gunicorn with the deployment's config, ``python -m workers posts leases``; SQLite in a
temporary directory or a schema of its own in PostgreSQL's ``test`` database):

1. **HTTP → subscriber.** ``--clients`` threads POST ``--posts`` group posts over real HTTP;
   one subscriber of the group (an AMQP consumer with pika, then, on a second run, an HTTP
   puller: ``GET .../messages?max=100&wait=1`` + ack) takes them. Reported: posts/s accepted
   (202) and posts/s delivered (first POST to the last post at the subscriber), and the
   latency POST sent → subscriber got it.
2. **Backlog drain, 1 vs 3 consumers on one subscriber id.** ``--backlog`` posts wait in the
   queue of fresh subscriber ids; then 1 or 3 consumers of one id (HTTP pullers, or pika
   consumers with prefetch 100) drain it, each post taking ``--work-ms`` of (sleeping) work.
   Reported: seconds to drain and posts/s.

Results go to stdout and to ``--out`` (default var/bench/subscriptions-<db>.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pika
import requests

from bench import services
from config import topology

REPO = services.REPO


def log(message: str) -> None:
    print(f"[subscriptions {time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


class Api:
    def __init__(self, url: str) -> None:
        self.url = url
        self.local = threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def call(self, method: str, path: str, auth: dict | None = None, **kwargs) -> requests.Response:
        return self.session().request(method, self.url + path, headers=auth, timeout=60, **kwargs)

    def user(self, name: str) -> dict:
        self.call("POST", "/v1/users", json={"username": name, "password": "correct horse"}).raise_for_status()
        token = self.call("POST", "/v1/tokens", json={"username": name, "password": "correct horse"}).json()["token"]
        return {"Authorization": f"Bearer {token}"}

    def subscribe(self, auth: dict, sid: str, group: str) -> None:
        response = self.call("PUT", f"/v1/subscriptions/{sid}", auth, json={"groups": [group]})
        assert response.status_code == 201, response.text

    def backlog(self, auth: dict, sid: str) -> int:
        return self.call("GET", f"/v1/subscriptions/{sid}", auth).json()["backlog"]


def post_many(api: Api, auth: dict, group: str, count: int, clients: int) -> tuple[dict[str, float], float, float]:
    """POST ``count`` posts from ``clients`` threads; return {id: time sent}, start and end."""
    sent: dict[str, float] = {}
    lock = threading.Lock()
    per_client = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]

    def client(n: int) -> None:
        for i in range(n):
            t = time.monotonic()
            response = api.call("POST", f"/v1/groups/{group}/messages", auth, json={"body": f"bench {i}"})
            if response.status_code != 202:
                raise RuntimeError(f"post answered {response.status_code}: {response.text[:200]}")
            with lock:
                sent[response.json()["id"]] = t

    threads = [threading.Thread(target=client, args=(n,)) for n in per_client]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent, started, time.monotonic()


class Consumer(threading.Thread):
    """One consumer of a subscriber id: ``kind`` is ``amqp`` (pika) or ``http`` (pull + ack)."""

    def __init__(self, kind: str, sid: str, amqp_url: str, api: Api, auth: dict, got: dict, lock: threading.Lock,
                 work_s: float = 0.0, prefetch: int = 100) -> None:
        super().__init__(daemon=True)
        self.kind, self.sid, self.amqp_url, self.api, self.auth = kind, sid, amqp_url, api, auth
        self.got, self.lock, self.work_s, self.prefetch = got, lock, work_s, prefetch
        self.stop = threading.Event()

    def _record(self, post_id: str) -> None:
        with self.lock:
            self.got.setdefault(post_id, time.monotonic())

    def run(self) -> None:
        if self.kind == "amqp":
            self._amqp()
        else:
            self._http()

    def _amqp(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.prefetch)
        for method, properties, body in channel.consume(topology.subscription_queue(self.sid),
                                                        inactivity_timeout=0.2):
            if self.stop.is_set():
                break
            if method is None:
                continue
            if self.work_s:
                time.sleep(self.work_s)
            self._record(properties.message_id)
            channel.basic_ack(method.delivery_tag)
        connection.close()

    def _http(self) -> None:
        while not self.stop.is_set():
            response = self.api.call("GET", f"/v1/subscriptions/{self.sid}/messages?max=100&wait=1", self.auth)
            response.raise_for_status()
            posts = response.json()["messages"]
            for post in posts:
                if self.work_s:
                    time.sleep(self.work_s)
                self._record(post["id"])
            if posts:
                self.api.call("POST", f"/v1/subscriptions/{self.sid}/ack", self.auth,
                              json={"ack_ids": [p["ack_id"] for p in posts]}).raise_for_status()


def run_consumers(kind: str, count: int, sid: str, broker_url: str, api: Api, auth: dict, expected: int,
                  work_s: float, timeout: float = 600) -> tuple[dict[str, float], float]:
    got: dict[str, float] = {}
    lock = threading.Lock()
    consumers = [Consumer(kind, sid, broker_url, api, auth, got, lock, work_s) for _ in range(count)]
    started = time.monotonic()
    for consumer in consumers:
        consumer.start()
    deadline = started + timeout
    while len(got) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    finished = max(got.values()) if got else time.monotonic()
    for consumer in consumers:
        consumer.stop.set()
    for consumer in consumers:
        consumer.join(30)
    if len(got) < expected:
        raise RuntimeError(f"{sid}: only {len(got)} of {expected} posts in {timeout} s")
    return got, finished - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--web-processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--work-ms", default="0,2", help="per-post work of drain consumers, comma-separated")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work_ms = [float(w) for w in args.work_ms.split(",")]

    work = Path(tempfile.mkdtemp(prefix="postroom-bench-subs-"))
    logs = work / "logs"
    schema = f"bench_subs_{uuid.uuid4().hex[:8]}"
    broker = services.Broker(work / "rabbitmq", logs).start()
    procs: list[services.Proc] = []
    results: dict = {"config": vars(args) | {"out": str(args.out) if args.out else None}, "runs": {}}
    try:
        db_url = services.database_url(args.db, work, schema)
        services.reset_database(args.db, db_url, work, schema)
        env = services.postroom_env(broker.url, db_url, work / "var")
        web = services.start_gunicorn("gunicorn", "app:create_app()", env, logs, args.web_processes, args.threads)
        procs.append(web.proc)
        procs.append(services.start_workers(env, logs, names=("posts", "leases")))
        services.wait_ready(web.url)
        api = Api(web.url)
        alice, bob = api.user("alice"), api.user("bob")
        assert api.call("PUT", "/v1/groups/bench", alice, json={}).status_code == 201
        log(f"services up ({args.db}, {args.web_processes} API processes × {args.threads} threads, "
            f"1 worker process); work dir {work}")

        # 1. HTTP → subscriber
        for kind in ("amqp", "http"):
            sid = f"e2e-{kind}"
            api.subscribe(bob, sid, "bench")
            got: dict[str, float] = {}
            lock = threading.Lock()
            consumer = Consumer(kind, sid, broker.url, api, bob, got, lock)
            consumer.start()
            sent, started, accepted = post_many(api, alice, "bench", args.posts, args.clients)
            deadline = time.monotonic() + 300
            while len(got) < len(sent) and time.monotonic() < deadline:
                time.sleep(0.01)
            consumer.stop.set()
            consumer.join(30)
            missing = set(sent) - set(got)
            if missing:
                raise RuntimeError(f"{len(missing)} posts never reached the {kind} subscriber")
            last = max(got[i] for i in sent)
            latencies = [(got[i] - sent[i]) * 1000 for i in sent]
            run = {"posts": len(sent), "accepted_per_s": round(len(sent) / (accepted - started), 1),
                   "delivered_per_s": round(len(sent) / (last - started), 1),
                   "latency_ms": {"p50": round(statistics.median(latencies), 1),
                                  "p95": round(percentile(latencies, 0.95), 1),
                                  "max": round(max(latencies), 1)}}
            results["runs"][f"http_to_{kind}_subscriber"] = run
            log(f"HTTP → {kind} subscriber: {run['accepted_per_s']} posts/s accepted, {run['delivered_per_s']} "
                f"posts/s delivered; POST→subscriber p50 {run['latency_ms']['p50']} ms, "
                f"p95 {run['latency_ms']['p95']} ms")
            api.call("DELETE", f"/v1/subscriptions/{sid}", bob)

        # 2. Backlog drain: 1 vs 3 consumers of one subscriber id
        plans = [(kind, n, w) for w in work_ms for kind in ("http", "amqp") for n in (1, 3)]
        sids = {plan: f"drain-{plan[0]}-{plan[1]}-{int(plan[2] * 1000)}us" for plan in plans}
        for sid in sids.values():
            api.subscribe(bob, sid, "bench")
        t0 = time.monotonic()
        post_many(api, alice, "bench", args.backlog, args.clients)
        for sid in sids.values():
            while api.backlog(bob, sid) < args.backlog:
                time.sleep(0.1)
        log(f"backlog of {args.backlog} posts in each of {len(sids)} subscriber ids ({time.monotonic() - t0:.1f} s)")
        for (kind, n, w), sid in sids.items():
            got, seconds = run_consumers(kind, n, sid, broker.url, api, bob, args.backlog, w / 1000)
            run = {"consumers": n, "kind": kind, "work_ms": w, "posts": len(got), "seconds": round(seconds, 2),
                   "posts_per_s": round(len(got) / seconds, 1)}
            results["runs"][f"drain_{kind}_{n}_work{w:g}ms"] = run
            log(f"drain {args.backlog} with {n} {kind} consumer(s), {w:g} ms work/post: {seconds:.2f} s "
                f"({run['posts_per_s']} posts/s)")
    finally:
        for proc in reversed(procs):
            proc.stop()
        broker.stop()
        if args.db == "postgres":
            services.drop_schema(schema)
    out = args.out or REPO / "var" / "bench" / f"subscriptions-{args.db}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
