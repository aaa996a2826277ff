"""Targets of issue #6, the markdown table and the PNG plot of a bench run."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any


def _get(d: dict, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _fmt(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, float)):
        return f"{x:,.{digits}f}"
    return str(x)


def targets(results: dict) -> list[dict]:
    """Evaluate the issue's targets; each: name, measured, required, ratio, holds (None: not measured)."""
    w, b = results.get("workloads", {}), results.get("baselines", {})
    out = []

    def ratio_target(name: str, value: float | None, base: float | None, factor: float, note: str,
                     paired: list[float] | None = None) -> None:
        if value is None or base is None or not base:
            out.append({"name": name, "measured": value, "baseline": base, "ratio": None, "required": factor,
                        "holds": None, "note": note})
            return
        # Runs of both sides taken next to each other: the median of their ratios moves less
        # with the machine's load than the ratio of the two medians.
        r = statistics.median(paired) if paired else value / base
        if paired:
            note += f"; ratio = median of run-by-run ratios {paired}"
        out.append({"name": name, "measured": value, "baseline": base, "ratio": round(r, 2), "required": factor,
                    "holds": r >= factor, "note": note})

    sends = _get(w, "mail_1", "sends_per_s")
    paired = _get(w, "mail_1", "paired_ratios", default={}) or {}
    ratio_target("API sends/s ≥ 2 × RabbitMQ HTTP publish", sends, _get(b, "mgmt_http", "ok_per_s"), 2.0,
                 "mail to 1 recipient vs (b), wrk at the same concurrency", paired.get("mgmt_http"))
    ratio_target("API sends/s ≥ 40 % of bare Flask + gunicorn", sends, _get(b, "bare_flask", "ok_per_s"), 0.4,
                 "vs (c), same gunicorn settings and wrk", paired.get("bare_flask"))
    ratio_target("API sends/s ≥ 1.5 × naive Flask + blocking pika", sends, _get(b, "naive", "ok_per_s"), 1.5,
                 "vs (e), same gunicorn settings and wrk", paired.get("naive"))
    runs = _get(w, "mail_1", "runs", default=[])
    if runs:
        worst = max((r["backlog"]["growth_per_s"] or 0) / max(r["ok_per_s"], 1) for r in runs)
        ends = [r["backlog"]["end_depth"] for r in runs]
        out.append({"name": "archive keeps up (backlog flat at the end)", "measured": ends, "baseline": None,
                    "ratio": round(worst, 3), "required": 0.05, "holds": worst <= 0.05,
                    "note": "ratio: worst backlog growth over each run's second half / send rate (≤ 5 %)"})
    drains = _get(w, "drain", default={}) or {}
    archive = min((d["archived_per_s"] for d in drains.values()), default=None)
    ratio_target("archive throughput ≥ 50 % of raw confirmed publish", archive,
                 _get(b, "raw_amqp", "publish_per_s"), 0.5, "steady drain rate of a backlog vs (a)")
    e2e = _get(w, "e2e", "e2e_ms", "p99")
    out.append({"name": "end-to-end p99 ≤ 100 ms at half the max send rate", "measured": e2e, "baseline": None,
                "ratio": None, "required": 100.0, "holds": None if e2e is None else e2e <= 100.0,
                "note": f"at {_fmt(_get(w, 'e2e', 'rate'))}/s, send call due → row visible to a reader"})
    inbox = _get(w, "inbox", default={}) or {}
    if len(inbox) >= 2:
        sizes = sorted(inbox, key=int)
        small, large = sizes[0], sizes[-1]
        for label in ("newest", "random"):
            a, z = _get(inbox, small, label, "p99_ms"), _get(inbox, large, label, "p99_ms")
            if a and z:
                out.append({"name": f"inbox page p99 at {int(large):,} ≤ 2 × at {int(small):,} ({label} page)",
                            "measured": z, "baseline": a, "ratio": round(z / a, 2), "required": 2.0,
                            "holds": z / a <= 2.0, "note": "ratio = p99(large) / p99(small)"})
    if len(drains) >= 2:
        sizes = sorted(drains, key=int)
        a, z = drains[sizes[0]]["worker_rss_max_kib"], drains[sizes[-1]]["worker_rss_max_kib"]
        out.append({"name": f"worker RSS (MiB) independent of queue depth ({int(sizes[-1]):,} vs {int(sizes[0]):,})",
                    "measured": round(z / 1024, 1), "baseline": round(a / 1024, 1), "ratio": round(z / a, 2),
                    "required": 1.2, "holds": z <= 1.2 * a, "note": "max RSS while draining; holds when within +20 %"})
    return out


def markdown(results: dict) -> str:
    meta = results.get("meta", {})
    w, b = results.get("workloads", {}), results.get("baselines", {})
    load = meta.get("load_1min", {})
    lines = [
        f"# Postroom bench ({meta.get('mode')}, {meta.get('database')})",
        "",
        f"{meta.get('started')}, {meta.get('seconds')} s, commit {meta.get('git')}, "
        f"{_get(meta, 'machine', 'cores')} cores; 1-min load during the run {_fmt(load.get('min'), 2)}–"
        f"{_fmt(load.get('max'), 2)} (mean {_fmt(load.get('mean'), 2)}). Medians of "
        f"{_get(meta, 'config', 'reps')} runs of {_get(meta, 'config', 'duration')} s, wrk at "
        f"{_get(meta, 'config', 'connections')} connections.",
        "",
        "## Throughput and latency",
        "",
        "| workload | accepted/s | p50 ms | p99 ms | archived/s | backlog at end | non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("mail_1", "Postroom: 1 KiB mail, 1 recipient"),
                        ("mail_10", "Postroom: mail to 10 recipients"),
                        ("group_post", "Postroom: group post, 3 subscriber ids")):
        r = w.get(name)
        if r:
            lines.append(f"| {label} | {_fmt(r['sends_per_s'])} | {_fmt(r['p50_ms'], 1)} | {_fmt(r['p99_ms'], 1)} | "
                         f"{_fmt(r['archived_per_s'])} | {', '.join(_fmt(x) for x in r['backlog_end'])} | {r['non_2xx']} |")
    for name, label in (("bare_flask", "(c) bare Flask + gunicorn"), ("naive", "(e) naive Flask + blocking pika"),
                        ("mgmt_http", "(b) RabbitMQ HTTP API publish")):
        r = b.get(name)
        if r:
            lines.append(f"| {label} | {_fmt(r['ok_per_s'])} | {_fmt(r['p50_ms'], 1)} | {_fmt(r['p99_ms'], 1)} | "
                         f"– | – | {r['non_2xx']} |")
    r = b.get("raw_amqp")
    if r:
        lines.append(f"| (a) raw aio-pika confirmed publish, 1000 in flight | {_fmt(r['publish_per_s'])} | – | – | – | – | – |")
        lines.append(f"| raw aio-pika consume, batch acks (for scale) | {_fmt(r['consume_per_s'])} | – | – | – | – | – |")
    r = b.get("raw_peewee")
    if r:
        lines.append(f"| (d) raw Peewee insert_many, 200 rows/commit | {_fmt(r['rows_per_s'])} rows | – | – | – | – | – |")
    drains = w.get("drain") or {}
    if drains:
        lines += ["", "## Archive (a backlog drained by a fresh worker)", "",
                  "| backlog | archived/s (steady) | drain s | worker RSS max MiB | CPU cores (worker, broker) |",
                  "|---:|---:|---:|---:|---|"]
        for count, d in sorted(drains.items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {int(count):,} | {_fmt(d['archived_per_s'])} | {_fmt(d['drain_s'], 1)} | "
                         f"{_fmt(d['worker_rss_max_kib'] / 1024, 1)} | {d.get('cpu_cores')} |")
    e = w.get("e2e")
    if e:
        lines += ["", "## End to end (send call → visible in the recipient's inbox)", "",
                  f"Open loop at {_fmt(e['rate'])} mails/s (half of {_fmt(e['max_rate'])}) for {e['duration_s']} s: "
                  f"e2e p50 {_fmt(e['e2e_ms']['p50'], 1)} ms, p90 {_fmt(e['e2e_ms']['p90'], 1)} ms, "
                  f"p99 {_fmt(e['e2e_ms']['p99'], 1)} ms, max {_fmt(e['e2e_ms']['max'], 1)} ms; the 202 itself p50 "
                  f"{_fmt(e['api_ms']['p50'], 1)} ms, p99 {_fmt(e['api_ms']['p99'], 1)} ms; {e['visible']} of "
                  f"{e['accepted']} accepted seen (polled every {e['poll_interval_ms']:g} ms)."]
    p = w.get("pull_ack")
    if p:
        lines += ["", "## Subscriber id: HTTP pull (max=100) + ack", "", "| consumers | posts acked/s | round trip p50 ms | p99 ms |",
                  "|---:|---:|---:|---:|"]
        for key, r in p.items():
            lines.append(f"| {r['consumers']} | {_fmt(r['acked_per_s'])} | {_fmt(r['round_trip_ms']['p50'], 1)} | "
                         f"{_fmt(r['round_trip_ms']['p99'], 1)} |")
    inbox = w.get("inbox")
    if inbox:
        lines += ["", f"## Inbox page (`GET /v1/mailbox/inbox?limit=50`, wrk at {_get(meta, 'config', 'inbox_connections')} connections)",
                  "", "| archived in the inbox | newest page/s | p50 ms | p99 ms | random page/s | p50 ms | p99 ms |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for count, r in sorted(inbox.items(), key=lambda kv: int(kv[0])):
            n, x = r["newest"], r["random"]
            lines.append(f"| {int(count):,} | {_fmt(n['req_per_s'])} | {_fmt(n['p50_ms'], 1)} | {_fmt(n['p99_ms'], 1)} | "
                         f"{_fmt(x['req_per_s'])} | {_fmt(x['p50_ms'], 1)} | {_fmt(x['p99_ms'], 1)} |")
    rss = w.get("rss_end")
    if rss:
        api = rss["api"]
        lines += ["", "## Memory at the end of the send workloads", "",
                  f"API: master {_fmt(api['master_kib'] / 1024, 1)} MiB, workers "
                  f"{', '.join(_fmt(x / 1024, 1) for x in api['workers_kib'])} MiB (total {_fmt(api['total_kib'] / 1024, 1)} MiB); "
                  f"worker process {_fmt(rss['worker_kib'] / 1024, 1)} MiB."]
    lines += ["", "## Targets (issue #6)", "",
              "mail_1 and baselines (b), (c), (e) ran round-robin (Postroom, then each baseline, per round); "
              "their ratios are medians of the per-round ratios.", "",
              "| target | measured | baseline | ratio | required | holds |",
              "|---|---:|---:|---:|---:|---|"]
    for t in results.get("targets", []):
        measured = t["measured"]
        measured = ", ".join(_fmt(x) for x in measured) if isinstance(measured, list) else _fmt(measured, 1)
        holds = {True: "yes", False: "**no**", None: "not measured"}[t["holds"]]
        lines.append(f"| {t['name']} | {measured} | {_fmt(t['baseline'], 1)} | {_fmt(t['ratio'], 2)} | "
                     f"{t['required']} | {holds} |")
    if results.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {k}: {v}" for k, v in results["errors"].items()]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w, b, meta = results.get("workloads", {}), results.get("baselines", {}), results.get("meta", {})
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    fig.suptitle(f"Postroom bench — {meta.get('mode')}, {meta.get('database')}, {meta.get('started')}, "
                 f"load {_fmt(_get(meta, 'load_1min', 'mean'), 2)}")

    # 1. throughput
    ax = axes[0][0]
    bars = []
    for name, label in (("mail_1", "mail ×1"), ("mail_10", "mail ×10"), ("group_post", "group post")):
        if name in w:
            bars.append((f"Postroom\n{label}", w[name]["sends_per_s"], "tab:blue"))
    drains = w.get("drain") or {}
    if drains:
        bars.append(("Postroom\narchived", min(d["archived_per_s"] for d in drains.values()), "tab:cyan"))
    for name, label, key in (("bare_flask", "(c) bare\nFlask", "ok_per_s"), ("naive", "(e) naive\npika", "ok_per_s"),
                             ("mgmt_http", "(b) RabbitMQ\nHTTP", "ok_per_s"),
                             ("raw_amqp", "(a) raw\npublish", "publish_per_s"),
                             ("raw_amqp", "raw\nconsume", "consume_per_s"), ("raw_peewee", "(d) Peewee\nrows", "rows_per_s")):
        if name in b:
            bars.append((label, b[name][key], "tab:gray"))
    if bars:
        ax.bar([x[0] for x in bars], [x[1] for x in bars], color=[x[2] for x in bars])
        for i, (_, v, _) in enumerate(bars):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_title("Throughput (per second)")
    ax.tick_params(axis="x", labelsize=7)

    # 2. latency
    ax = axes[0][1]
    labels, p50, p99 = [], [], []
    for name, label in (("mail_1", "mail ×1"), ("mail_10", "mail ×10"), ("group_post", "group post")):
        if name in w:
            labels.append(f"Postroom\n{label}")
            p50.append(w[name]["p50_ms"])
            p99.append(w[name]["p99_ms"])
    for name, label in (("bare_flask", "(c) bare"), ("naive", "(e) naive"), ("mgmt_http", "(b) RMQ HTTP")):
        if name in b:
            labels.append(label)
            p50.append(b[name]["p50_ms"])
            p99.append(b[name]["p99_ms"])
    if "e2e" in w:
        labels.append(f"e2e at\n{w['e2e']['rate']:.0f}/s")
        p50.append(w["e2e"]["e2e_ms"]["p50"])
        p99.append(w["e2e"]["e2e_ms"]["p99"])
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p99, 0.4, label="p99")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.axhline(100, color="red", lw=0.8, ls="--", label="e2e p99 target")
    ax.set_title(f"Latency at {_get(meta, 'config', 'connections')} connections (ms)")
    ax.legend()

    # 3. inbox pages
    ax = axes[1][0]
    inbox = w.get("inbox") or {}
    if inbox:
        sizes = sorted(inbox, key=int)
        for label, style in (("newest", "-"), ("random", "--")):
            ax.plot([int(s) for s in sizes], [inbox[s][label]["p50_ms"] for s in sizes], "o" + style, label=f"{label} p50")
            ax.plot([int(s) for s in sizes], [inbox[s][label]["p99_ms"] for s in sizes], "s" + style, label=f"{label} p99")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.legend()
    ax.set_title("Inbox page latency (ms) by archived mails in the inbox")

    # 4. memory
    ax = axes[1][1]
    mem = []
    rss = w.get("rss_end")
    if rss:
        for i, kib in enumerate(rss["api"]["workers_kib"]):
            mem.append((f"API w{i}", kib / 1024))
        mem.append(("worker\n(end)", rss["worker_kib"] / 1024))
    for count, d in sorted(drains.items(), key=lambda kv: int(kv[0])):
        mem.append((f"worker max\n{int(count):,} backlog", d["worker_rss_max_kib"] / 1024))
    if mem:
        ax.bar([m[0] for m in mem], [m[1] for m in mem], color="tab:green")
        for i, (_, v) in enumerate(mem):
            ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_title("RSS (MiB)")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
