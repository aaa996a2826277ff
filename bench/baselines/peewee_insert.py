"""Baseline (d): raw Peewee ``insert_many`` into the same database (same file, pragmas and
driver as the archive: SQLite WAL + synchronous=FULL, or the same PostgreSQL schema), rows
shaped like the archive's ``message`` rows with a 1 KiB body, committed in transactions of
the worker's batch size: the database's ceiling for the archive's main table.

``python -m bench.baselines.peewee_insert --db URL --rows N --batch B`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

import peewee
from ulid import ULID

from app.store.db import make_database


def run(url: str, rows: int, batch: int, size: int = 1024) -> dict:
    database = make_database(url)

    class RawMessage(peewee.Model):
        id = peewee.CharField(max_length=36, primary_key=True)
        sender = peewee.CharField(max_length=32)
        to_list = peewee.TextField()
        cc_list = peewee.TextField()
        bcc_list = peewee.TextField()
        subject = peewee.TextField()
        body = peewee.TextField()
        in_reply_to = peewee.CharField(max_length=36, null=True)
        thread_id = peewee.CharField(max_length=36, index=True)
        sent_at = peewee.DateTimeField()
        archived_at = peewee.DateTimeField()
        content_hash = peewee.CharField(max_length=64)

        class Meta:
            table_name = "bench_raw_message"

    RawMessage._meta.set_database(database)
    database.connect()
    database.drop_tables([RawMessage])
    database.create_tables([RawMessage])
    body = "x" * size
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    started = time.perf_counter()
    for start in range(0, rows, batch):
        chunk = []
        for _ in range(min(batch, rows - start)):
            mid = str(ULID())
            chunk.append({"id": mid, "sender": "alice", "to_list": '["bob"]', "cc_list": "[]", "bcc_list": "[]",
                          "subject": "bench", "body": body, "in_reply_to": None, "thread_id": mid,
                          "sent_at": now, "archived_at": now, "content_hash": "0" * 64})
        with database.atomic():
            for i in range(0, len(chunk), 100):  # the archive's INSERT_CHUNK
                RawMessage.insert_many(chunk[i:i + 100]).execute()
    seconds = time.perf_counter() - started
    database.drop_tables([RawMessage])
    database.close()
    return {"rows": rows, "batch": batch, "seconds": seconds, "rows_per_s": rows / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--rows", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(run(args.db, args.rows, args.batch)))


if __name__ == "__main__":
    main()
