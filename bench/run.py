"""``make bench`` / ``make bench-quick``: Postroom beside raw RabbitMQ, RabbitMQ's HTTP API,
bare Flask, raw Peewee and the naive design, on services the bench starts itself.

    python -m bench.run --mode full|quick [--db sqlite|postgres] [--only NAME,...]

Writes bench/results/latest.json, latest.md and latest.png (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from bench import loadgen, report, services, workloads
from bench.services import REPO
from config import topology

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "duration": 3, "reps": 1, "warmup": 1, "connections": 50, "drain_counts": [3000],
        "seeds": [1000, 10000], "pull_duration": 3, "e2e_duration": 4, "raw_count": 10000,
        "peewee_rows": 10000, "inbox_duration": 2, "inbox_connections": 4,
    },
    "full": {
        "duration": 10, "reps": 3, "warmup": 3, "connections": 50, "drain_counts": [20000, 100000],
        "seeds": [10**4, 10**5, 10**6], "pull_duration": 10, "e2e_duration": 20, "raw_count": 50000,
        "peewee_rows": 50000, "inbox_duration": 8, "inbox_connections": 4,
    },
}

ALL = ("mail_1", "mail_10", "group_post", "pull_ack", "e2e", "drain", "inbox",
       "bare_flask", "naive", "mgmt_http", "raw_amqp", "raw_peewee")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {services.loadavg()[0]:.2f}] {msg}", flush=True)


def median_of(runs: list[dict], key: Callable[[dict], float]) -> float:
    values = [key(r) for r in runs]
    return statistics.median(values) if values else float("nan")


def process_tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(services.children(p))
    return found


def backlog_trend(samples: list[dict], queue: str, start: float, end: float) -> dict:
    """Depth at the end of the window and its growth (msgs/s) over the window's second half."""
    inside = [s for s in samples if start <= s["t"] <= end and s["depth"].get(queue, -1) >= 0]
    if len(inside) < 2:
        return {"end_depth": None, "growth_per_s": None, "max_depth": None}
    half = [s for s in inside if s["t"] >= start + (end - start) / 2] or inside[-2:]
    if len(half) < 2:
        half = inside[-2:]
    xs = [s["t"] for s in half]
    ys = [s["depth"][queue] for s in half]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    return {"end_depth": inside[-1]["depth"][queue], "growth_per_s": round(slope, 1),
            "max_depth": max(s["depth"][queue] for s in inside)}


class Bench:
    def __init__(self, mode: str, db: str, only: set[str], out: Path, profile: bool = False,
                 keep: bool = False) -> None:
        self.mode, self.db, self.only, self.out, self.profile, self.keep = mode, db, only, out, profile, keep
        self.cfg = MODES[mode]
        self.work = REPO / "var" / "bench" / db
        self.logs = self.work / "logs"
        self.schema = f"bench_{os.getpid()}"
        self.results: dict[str, Any] = {"workloads": {}, "baselines": {}, "errors": {}}
        self.load: list[dict] = []
        self.broker: services.Broker | None = None
        self.api: services.Gunicorn | None = None
        self.workers: services.Proc | None = None
        self.database_ready = False

    def wanted(self, name: str) -> bool:
        return not self.only or name in self.only

    def note_load(self, label: str) -> None:
        self.load.append({"t": time.time(), "label": label, "loadavg": services.loadavg()})

    def step(self, name: str, fn: Callable[[], Any], into: str = "workloads") -> None:
        if not self.wanted(name):
            return
        self.note_load(f"{name} start")
        log(f"{name} ...")
        started = time.monotonic()
        try:
            self.results[into][name] = fn()
        except Exception as exc:  # one workload failing must not lose the others' figures
            traceback.print_exc()
            self.results["errors"][name] = f"{type(exc).__name__}: {exc}"
        self.note_load(f"{name} end")
        log(f"{name} done in {time.monotonic() - started:.0f} s")

    # ---------------------------------------------------------------- run everything

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.wrk = services.ensure_wrk()
        self.work.mkdir(parents=True, exist_ok=True)
        self.note_load("start")
        log(f"mode {self.mode}, database {self.db}; starting the bench broker")
        self.broker = services.Broker(self.work / "rabbitmq", self.logs).start()
        try:
            self.db_url = services.database_url(self.db, self.work, self.schema)
            postroom_parts = ("mail_1", "mail_10", "group_post", "pull_ack", "e2e", "drain", "inbox",
                              "bare_flask", "naive", "mgmt_http")
            if any(self.wanted(n) for n in postroom_parts):
                self.postroom()
            self.baselines()
        finally:
            self.stop_postroom()
            self.broker.stop()
            if self.db == "postgres":
                services.drop_schema(self.schema)
            elif not self.keep:
                for suffix in ("", "-wal", "-shm"):  # up to 2 GB after the 10^6 inbox
                    Path(str(self.work / "postroom.db") + suffix).unlink(missing_ok=True)
        self.note_load("end")
        self.results["meta"] = self.meta(started)
        self.results["targets"] = report.targets(self.results)
        return self.results

    def meta(self, started: float) -> dict:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "app", "workers", "config"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
        loads = [x["loadavg"][0] for x in self.load]
        return {
            "mode": self.mode, "database": self.db, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started, 1), "git": git + ("+dirty" if dirty else ""),
            "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
            "load_1min": {"min": min(loads), "max": max(loads), "mean": round(statistics.fmean(loads), 2)},
            "load_log": self.load, "config": self.cfg,
            "postroom": {"web_processes": int(os.environ.get("POSTROOM_WEB_PROCESSES", os.cpu_count() + 1)),
                         "web_threads": int(os.environ.get("POSTROOM_WEB_THREADS", 16))},
        }

    # ---------------------------------------------------------------- Postroom

    def env(self) -> dict[str, str]:
        return services.postroom_env(self.broker.url, self.db_url, self.work / "var")

    def start_postroom(self) -> None:
        env = self.env()
        self.api = services.start_gunicorn("postroom-api", "app:create_app()", env, self.logs)
        self.workers = services.start_workers(env, self.logs)
        services.wait_ready(self.api.url)

    def stop_postroom(self) -> None:
        for proc in (self.api.proc if self.api else None, self.workers):
            if proc is not None:
                proc.stop()
        self.api = self.workers = None

    def pids(self) -> dict[str, list[int]]:
        return {"api": [self.api.proc.pid, *self.api.worker_pids()], "worker": [self.workers.pid],
                "broker": process_tree(self.broker.server.pid)}

    def postroom(self) -> None:
        log(f"database {self.db}: fresh schema; starting Postroom (gunicorn + workers)")
        services.reset_database(self.db, self.db_url, self.work, self.schema)
        self.database_ready = True
        self.start_postroom()
        self.accounts = workloads.Accounts(self.api.url).create()
        body10 = workloads.mail_body(workloads.RECIPIENTS_10)
        if any(self.wanted(n) for n in ("mail_1", "bare_flask", "naive", "mgmt_http")):
            self.note_load("mail_1 start")
            try:
                self.compare()
            except Exception as exc:  # keep the other workloads' figures
                traceback.print_exc()
                self.results["errors"]["mail_1"] = f"{type(exc).__name__}: {exc}"
            self.note_load("mail_1 end")
        self.step("mail_10", lambda: self.sends("/v1/messages", body10, topology.MAIL_ARCHIVE_QUEUE, "message"))
        self.step("group_post", lambda: self.sends(f"/v1/groups/{workloads.GROUP}/messages", workloads.post_body(),
                                                   topology.POSTS_ARCHIVE_QUEUE, "post"))
        self.step("pull_ack", self.pull_ack)
        self.step("e2e", self.e2e)
        self.results["workloads"]["rss_end"] = {"api": self.api.rss(),
                                                "worker_kib": services.rss_kib(self.workers.pid)}
        self.step("drain", self.drain)
        self.step("inbox", self.inbox)
        self.stop_postroom()

    def send_run(self, rep: int, path: str, body: bytes, queue: str, table: str) -> dict:
        """One wrk run of a send workload, with the archive's backlog, rows and CPU sampled."""
        c = self.cfg
        auth = self.accounts.auth("alice")
        rows0 = workloads.count_rows(self.db_url, table)
        profilers = self.start_profilers(path) if self.profile and rep == 0 else []
        with workloads.Sampler(self.broker, [queue], self.pids(), self.db_url, table, interval=0.5) as sampler:
            time.sleep(0.6)
            res = loadgen.run_wrk(self.wrk, self.api.url, path, auth=auth, body=body,
                                  connections=c["connections"], duration=c["duration"])
            end = res["started"] + res["seconds"]
        for p in profilers:
            p.wait(60)
        window = [s for s in sampler.samples if res["started"] - 0.6 <= s["t"] <= end + 0.6]
        first, last = window[0], window[-1]
        res["archived_per_s"] = (last["rows"] - first["rows"]) / (last["t"] - first["t"])
        res["backlog"] = backlog_trend(sampler.samples, queue, res["started"], end + 0.5)
        res["cpu_cores"] = workloads.cpu_share(sampler.samples, res["started"], end)
        res["drain_after_s"] = round(workloads.wait_drained(self.broker, queue, self.db_url, table,
                                                            rows0 + res["ok"], timeout=600), 2)
        res["loadavg"] = services.loadavg()
        log(f"  run {rep + 1}: {res['ok_per_s']:.0f} accepted/s, p50 {res['latency_ms']['p50']:.1f} ms, "
            f"p99 {res['latency_ms']['p99']:.1f} ms, non-2xx {res['non_2xx']}, archived {res['archived_per_s']:.0f}/s, "
            f"backlog end {res['backlog']['end_depth']} (growth {res['backlog']['growth_per_s']}/s), "
            f"drained {res['drain_after_s']} s later, cpu {res['cpu_cores']}")
        return res

    def warm_send(self, path: str, body: bytes, queue: str, table: str) -> None:
        rows0 = workloads.count_rows(self.db_url, table)
        warm = loadgen.run_wrk(self.wrk, self.api.url, path, auth=self.accounts.auth("alice"), body=body,
                               connections=self.cfg["connections"], duration=self.cfg["warmup"])
        workloads.wait_drained(self.broker, queue, self.db_url, table, rows0 + warm["ok"], timeout=300)

    @staticmethod
    def send_summary(runs: list[dict]) -> dict:
        return {"runs": runs, "sends_per_s": median_of(runs, lambda r: r["ok_per_s"]),
                "archived_per_s": median_of(runs, lambda r: r["archived_per_s"]),
                "p50_ms": median_of(runs, lambda r: r["latency_ms"]["p50"]),
                "p99_ms": median_of(runs, lambda r: r["latency_ms"]["p99"]),
                "non_2xx": sum(r["non_2xx"] for r in runs),
                "backlog_end": [r["backlog"]["end_depth"] for r in runs],
                "backlog_growth_per_s": [r["backlog"]["growth_per_s"] for r in runs]}

    def sends(self, path: str, body: bytes, queue: str, table: str) -> dict:
        self.warm_send(path, body, queue, table)
        return self.send_summary([self.send_run(rep, path, body, queue, table) for rep in range(self.cfg["reps"])])

    def compare(self) -> None:
        """mail_1 and the HTTP baselines (b), (c), (e), measured round-robin with the same wrk
        settings: every run of Postroom has a run of each baseline next to it in time, so a
        change of the machine's load (other test suites) hits both sides of each ratio alike."""
        c = self.cfg
        body = workloads.mail_body(["bob"])
        queue, table = topology.MAIL_ARCHIVE_QUEUE, "message"
        mgmt_body = json.dumps({"properties": {"delivery_mode": 2}, "routing_key": "bench.mgmt",
                                "payload": workloads.BODY_1K, "payload_encoding": "string"}).encode()
        servers: dict[str, services.Gunicorn] = {}
        targets: list[tuple[str, tuple]] = []
        try:
            if self.wanted("bare_flask"):
                servers["bare_flask"] = services.start_gunicorn("bare-flask", "bench.baselines.bare_app:create_app()",
                                                                self.env(), self.logs)
            if self.wanted("naive"):
                self.broker.declare_quorum("bench.naive")
                servers["naive"] = services.start_gunicorn(
                    "naive", "bench.baselines.naive_app:create_app()",
                    {**self.env(), "BENCH_AMQP_URL": self.broker.url, "BENCH_QUEUE": "bench.naive"}, self.logs)
            if self.wanted("mgmt_http"):
                self.broker.declare_quorum("bench.mgmt")

            for name, server in servers.items():
                targets.append((name, (server.url, "/send", body, "")))
            if self.wanted("mgmt_http"):
                targets.append(("mgmt_http", (self.broker.mgmt_url, "/api/exchanges/%2F/amq.default/publish",
                                              mgmt_body, "Basic Z3Vlc3Q6Z3Vlc3Q=")))

            def run(spec: tuple, duration: float) -> dict:
                url, path, payload, auth = spec
                return loadgen.run_wrk(self.wrk, url, path, auth=auth, body=payload, connections=c["connections"],
                                       duration=duration)

            self.note_load("compare start")
            log("mail_1 beside baselines " + ", ".join(name for name, _ in targets) + ", round-robin ...")
            if self.wanted("mail_1"):
                self.warm_send("/v1/messages", body, queue, table)
            for name, spec in targets:
                run(spec, c["warmup"])
            runs: dict[str, list[dict]] = {name: [] for name, _ in targets}
            postroom_runs: list[dict] = []
            for rep in range(c["reps"]):
                if self.wanted("mail_1"):
                    postroom_runs.append(self.send_run(rep, "/v1/messages", body, queue, table))
                for name, spec in targets:
                    res = run(spec, c["duration"])
                    res["loadavg"] = services.loadavg()
                    runs[name].append(res)
                    log(f"  {name} run {rep + 1}: {res['ok_per_s']:.0f} ok/s, p50 {res['latency_ms']['p50']:.1f} ms, "
                        f"p99 {res['latency_ms']['p99']:.1f} ms, non-2xx {res['non_2xx']}")
            if postroom_runs:
                self.results["workloads"]["mail_1"] = self.send_summary(postroom_runs)
            for name, rs in runs.items():
                self.results["baselines"][name] = {
                    "runs": rs, "ok_per_s": median_of(rs, lambda r: r["ok_per_s"]),
                    "p50_ms": median_of(rs, lambda r: r["latency_ms"]["p50"]),
                    "p99_ms": median_of(rs, lambda r: r["latency_ms"]["p99"]),
                    "non_2xx": sum(r["non_2xx"] for r in rs)}
                if name in servers:
                    self.results["baselines"][name]["rss"] = servers[name].rss()
            if postroom_runs:  # the ratio of each pair of neighbouring runs, besides the ratio of medians
                self.results["workloads"]["mail_1"]["paired_ratios"] = {
                    name: [round(p["ok_per_s"] / b["ok_per_s"], 3) for p, b in zip(postroom_runs, rs)]
                    for name, rs in runs.items()}
            self.note_load("compare end")
        finally:
            for server in servers.values():
                server.proc.stop()
            for queue_name in ("bench.naive", "bench.mgmt"):
                self.broker.purge(queue_name)

    def start_profilers(self, path: str) -> list[subprocess.Popen]:
        """py-spy (collapsed stacks, idle frames dropped) on every API process and the worker."""
        label = path.strip("/").replace("/", "-")
        procs = []
        for role, pid in [("api", p) for p in self.api.worker_pids()] + [("worker", self.workers.pid)]:
            out = self.logs / f"profile-{label}-{role}-{pid}.txt"
            procs.append(subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--format", "raw",
                 "--rate", "200", "--gil", "--duration", str(int(self.cfg["duration"])), "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        log(f"  profiling {len(procs)} processes into {self.logs}/profile-{label}-*.txt")
        return procs

    def pull_ack(self) -> dict:
        out = {}
        for consumers, sid in ((1, workloads.SUBSCRIBER_IDS[0]), (3, workloads.SUBSCRIBER_IDS[1])):
            queue = topology.subscription_queue(sid)
            depth = workloads.ready_counts(self.broker.url, [queue])[queue]
            res = workloads.pull_ack(self.api.url, self.accounts.auth("alice"), sid, consumers,
                                     self.cfg["pull_duration"] * self.cfg["reps"])
            res["queue_depth_before"] = depth
            out[f"consumers_{consumers}"] = res
            log(f"  {consumers} consumer(s): {res['acked_per_s']:.0f} posts acked/s "
                f"(round trip p50 {res['round_trip_ms']['p50']:.1f} ms) from a queue of {res['queue_depth_before']}")
        return out

    def e2e(self) -> dict:
        peak = self.results["workloads"].get("mail_1", {}).get("sends_per_s") or 400.0
        rate = round(peak / 2)
        res = workloads.end_to_end(self.api.url, self.db_url, self.accounts.auth("lat-sender"), "lat-rcpt", rate,
                                   self.cfg["e2e_duration"])
        res["max_rate"] = peak
        log(f"  at {rate}/s: e2e p50 {res['e2e_ms']['p50']:.1f} ms p99 {res['e2e_ms']['p99']:.1f} ms; "
            f"API p50 {res['api_ms']['p50']:.1f} p99 {res['api_ms']['p99']:.1f} ms; "
            f"{res['visible']}/{res['accepted']} seen")
        return res

    def drain(self) -> dict:
        """Backlogs of different depths drained by a fresh worker: archive throughput and
        worker RSS against queue depth."""
        self.workers.stop()
        out = {}
        env = self.env()
        queue = topology.MAIL_ARCHIVE_QUEUE
        for count in self.cfg["drain_counts"]:
            seconds = workloads.publish_mails(self.broker.url, count)
            rows0 = workloads.count_rows(self.db_url, "message")
            self.workers = services.start_workers(env, self.logs, label=f"workers-drain-{count}")
            pids = {"worker": [self.workers.pid], "broker": process_tree(self.broker.server.pid)}
            with workloads.Sampler(self.broker, [queue], pids, self.db_url, "message", interval=0.25) as sampler:
                took = workloads.wait_drained(self.broker, queue, self.db_url, "message", rows0 + count,
                                              timeout=900)
            rows = [(s["t"], s["rows"] - rows0) for s in sampler.samples]
            lo = next((t, r) for t, r in rows if r >= 0.1 * count)
            hi = next((t, r) for t, r in rows if r >= 0.9 * count)
            steady = (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else float("nan")
            rss = [s["rss_kib"]["worker"][0] for s in sampler.samples if s["rss_kib"]["worker"][0]]
            res = {"backlog": count, "publish_s": round(seconds, 2), "drain_s": round(took, 2),
                   "archived_per_s": steady, "worker_rss_max_kib": max(rss), "worker_rss_end_kib": rss[-1],
                   "cpu_cores": workloads.cpu_share(sampler.samples, lo[0], hi[0])}
            out[str(count)] = res
            log(f"  backlog {count}: archived {steady:.0f}/s steady, drained in {took:.1f} s, worker RSS max "
                f"{max(rss) / 1024:.0f} MiB, cpu {res['cpu_cores']}")
            self.workers.stop()
        self.workers = services.start_workers(env, self.logs, label="workers-after-drain")
        return out

    def inbox(self) -> dict:
        """Inbox pages at each archive size. Each size gets a database of its own (seeded with
        insert_many) and an API of its own, and the sizes are measured round-robin, so a change
        of the machine's load during the workload hits every size alike."""
        c = self.cfg
        sizes = c["seeds"]
        servers: dict[int, tuple[services.Gunicorn, str]] = {}
        databases: list[tuple[str, str]] = []
        out: dict[str, dict] = {}
        try:
            for size in sizes:
                schema, name = f"{self.schema}_inbox_{size}", f"inbox-{size}.db"
                url = services.database_url(self.db, self.work, schema, name)
                services.reset_database(self.db, url, self.work, schema, name)
                databases.append((schema, name))
                env = services.postroom_env(self.broker.url, url, self.work / "var")
                server = services.start_gunicorn(f"inbox-api-{size}", "app:create_app()", env, self.logs)
                accounts = workloads.Accounts(server.url)
                accounts.USERS = ("reader", "seeder")
                for user in accounts.USERS:
                    accounts.create_user(user)
                seconds = workloads.seed_inbox(url, "reader", "seeder", 0, size)
                settle = workloads.settle_database(url)
                log(f"  seeded {size:,} archived mails in {seconds:.1f} s ({size / seconds:.0f}/s)")
                servers[size] = (server, accounts.auth("reader"))
                out[str(size)] = {"seed_s": round(seconds, 1), "settle_s": settle,
                                  "newest": {"runs": []}, "random": {"runs": []}}
            for rep in range(c["reps"]):
                for size in sizes:
                    server, auth = servers[size]
                    for label, random_before in (("newest", 0), ("random", size)):
                        if rep == 0:  # not recorded: warms the caches as steady use would
                            loadgen.run_wrk(self.wrk, server.url, "/v1/mailbox/inbox?limit=50", method="GET",
                                            auth=auth, connections=c["inbox_connections"],
                                            duration=max(1, c["inbox_duration"] // 2), random_before=random_before)
                        run = loadgen.run_wrk(self.wrk, server.url, "/v1/mailbox/inbox?limit=50", method="GET",
                                              auth=auth, connections=c["inbox_connections"],
                                              duration=c["inbox_duration"], random_before=random_before)
                        run["loadavg"] = services.loadavg()
                        out[str(size)][label]["runs"].append(run)
                        log(f"  {size:,} archived, {label} page: {run['ok_per_s']:.0f} pages/s, "
                            f"p50 {run['latency_ms']['p50']:.1f} ms, p99 {run['latency_ms']['p99']:.1f} ms")
            for size in sizes:
                for label in ("newest", "random"):
                    res = out[str(size)][label]
                    runs = res["runs"]
                    res.update(req_per_s=median_of(runs, lambda r: r["ok_per_s"]),
                               p50_ms=median_of(runs, lambda r: r["latency_ms"]["p50"]),
                               p99_ms=median_of(runs, lambda r: r["latency_ms"]["p99"]),
                               non_2xx=sum(r["non_2xx"] for r in runs))
        finally:
            for server, _ in servers.values():
                server.proc.stop()
            for schema, name in databases:
                if self.db == "postgres":
                    services.drop_schema(schema)
                elif not self.keep:
                    services.remove_sqlite(self.work / name)
        return out

    # ---------------------------------------------------------------- baselines

    def baselines(self) -> None:
        def raw_amqp() -> dict:
            runs = []
            for _ in range(self.cfg["reps"]):
                out = subprocess.run([sys.executable, "-m", "bench.baselines.amqp_raw", "--url", self.broker.url,
                                      "--queue", "bench.raw", "--count", str(self.cfg["raw_count"])],
                                     cwd=REPO, capture_output=True, text=True, check=True, timeout=900)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                log(f"  publish {runs[-1]['publish']['msg_per_s']:.0f} msg/s, consume {runs[-1]['consume']['msg_per_s']:.0f} msg/s")
            return {"runs": runs, "publish_per_s": median_of(runs, lambda r: r["publish"]["msg_per_s"]),
                    "consume_per_s": median_of(runs, lambda r: r["consume"]["msg_per_s"])}

        self.step("raw_amqp", raw_amqp, into="baselines")

        def raw_peewee() -> dict:
            runs = []
            for _ in range(self.cfg["reps"]):
                out = subprocess.run([sys.executable, "-m", "bench.baselines.peewee_insert", "--db", self.db_url,
                                      "--rows", str(self.cfg["peewee_rows"]), "--batch", "200"],
                                     cwd=REPO, capture_output=True, text=True, check=True, timeout=900)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                log(f"  {runs[-1]['rows_per_s']:.0f} rows/s")
            return {"runs": runs, "rows_per_s": median_of(runs, lambda r: r["rows_per_s"])}

        if self.wanted("raw_peewee") and not self.database_ready:
            services.reset_database(self.db, self.db_url, self.work, self.schema)
        self.step("raw_peewee", raw_peewee, into="baselines")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(ALL)}")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--name", default="latest", help="results file stem (default latest)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the API and worker processes during the first run of each send workload")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite database afterwards")
    parser.add_argument("--duration", type=float, help="override the mode's seconds per run")
    parser.add_argument("--reps", type=int, help="override the mode's runs per workload")
    args = parser.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - set(ALL)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    def stop(signum: int, _frame: object) -> None:  # unwind, so every `finally` stops what it started
        raise SystemExit(f"bench: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    bench = Bench(args.mode, args.db, only, Path(args.out), profile=args.profile, keep=args.keep)
    if args.duration:
        bench.cfg = {**bench.cfg, "duration": args.duration}
    if args.reps:
        bench.cfg = {**bench.cfg, "reps": args.reps}
    results = bench.run()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{args.name}.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(out / f"{args.name}.json")
    (out / f"{args.name}.md").write_text(report.markdown(results))
    report.plot(results, out / f"{args.name}.png")
    log(f"wrote {out / args.name}.json, .md, .png in {results['meta']['seconds']:.0f} s")
    print(report.markdown(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
