"""`make bench-email`: end-to-end email throughput and latency, outbox to SMTP sink, exactly-once checked.

Queues N emails straight into the outbox, then lets real Celery worker processes deliver them to an
aiosmtpd sink running in its own process, three ways:
- batched: the queue processor claims batches and sends each over one reused SMTP connection;
- wakeups: every email is queued in its own transaction, which publishes its `send_email_async`
  wake-up after commit, as a request does; clocked from the first queue call, so it is what the API
  path costs end to end;
- unbatched: one `send_email_task` per email, one SMTP connection each (what batching saves).
A warm-up first (WARM_UP emails through the batched and wake-up paths, not measured), so the worker is
measured as a deployment runs it: long-lived, connected.
Before each mode, against the same sink, the raw baseline: 2 processes, each sending pre-built messages
of the same size over one reused `smtplib` connection, no database: what the sink and this machine
allow. The median of the three is `raw_emails_per_s`, so each mode's `ratio_to_raw` holds across
machines. Every run checks each Message-ID arrived exactly once. The
last line printed is one JSON object.
"""

import argparse
import json
import multiprocessing
import smtplib
import statistics
import time
import uuid
from contextlib import ExitStack
from multiprocessing.synchronize import Barrier
from pathlib import Path

from benchmarks.common import percentile, prepare, read_journal, start_sink

CHUNK = 500
BEAT_SECONDS = 10
RAW_PROCESSES = 2
WARM_UP = 400  # emails through each of the batched and wake-up paths before measuring


def draft(i: int) -> dict[str, str]:
    """The benchmark's email number i, as queued and as the raw baseline sends it."""
    return {
        "to_email": f"user{i}@example.com", "to_name": f"User {i}", "subject": f"Benchmark message {i}",
        "body_text": f"Hello {i}\n" * 5, "body_html": f"<p>Hello {i}</p>" * 5,
    }  # fmt: skip


def _raw_sender(port: int, sender: str, messages: list[tuple[str, bytes]], ready: Barrier) -> None:
    """One raw process: connect, wait for the other, then send every message over that connection."""
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    smtp.ehlo()
    ready.wait()
    for recipient, message in messages:
        smtp.sendmail(sender, [recipient], message)
    smtp.quit()


def measure_raw(n: int, port: int, journal: Path) -> dict:
    """The baseline: `RAW_PROCESSES` processes x one reused connection, same messages, no database."""
    from src.config import settings
    from src.db import utcnow
    from src.emails.mime import compose_message

    domain = settings.smtp_from_email.rpartition("@")[2] or "herald.local"  # as queue_email's Message-IDs
    messages = [
        (d["to_email"], compose_message(**d, message_id=f"<{uuid.uuid4().hex}@{domain}>", date=utcnow()))
        for d in map(draft, range(n))
    ]
    journal.write_text("")
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(RAW_PROCESSES + 1)
    processes = [
        context.Process(
            target=_raw_sender,
            args=(port, settings.smtp_from_email,
                  [(to, m.encode("ascii")) for to, m in messages[k::RAW_PROCESSES]], ready),
        )
        for k in range(RAW_PROCESSES)
    ]  # fmt: skip
    for process in processes:
        process.start()
    ready.wait()
    started = time.time()
    for process in processes:
        process.join()
    time.sleep(0.5)
    received = read_journal(journal)
    wanted = {m.split("Message-ID: ", 1)[1].split("\r\n", 1)[0] for _, m in messages}
    seen = [r["message_id"] for r in received if r["message_id"] in wanted]
    last = max((r["at"] for r in received), default=started)
    return {
        "emails_per_s": round(len(set(seen)) / max(last - started, 1e-9), 1),
        "lost": n - len(set(seen)),
        "duplicates": len(seen) - len(set(seen)),
    }


def measure_serial_commits(n: int) -> dict:
    """The wake-ups mode's own baseline: one caller committing one outbox row per transaction with the
    bare driver, as fast as it can: the same table, indexes, row size and durable commit, without
    Herald's validation, MIME composition or SQLAlchemy. The wake-ups mode is such a serial caller:
    this is what its caller could do with none of Herald's work. The rows are `cancelled`, which no
    worker claims, and deleted after."""
    from sqlalchemy import bindparam, delete, insert
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg

    from src import db
    from src.emails.mime import compose_message
    from src.emails.models import EmailQueue, EmailStatus

    assert db.engine is not None
    dialect = (
        postgresql_psycopg.dialect()
        if db.engine.dialect.name == "postgresql"
        else sqlite.dialect(paramstyle="named")  # sqlite3 takes a dict for :name parameters
    )
    now = str(db.utcnow().replace(tzinfo=None))
    first = draft(0)
    row = {
        "to_email": first["to_email"], "to_name": first["to_name"], "subject": first["subject"],
        "mime": compose_message(**first, message_id="<serial@herald.local>", date=db.utcnow()),
        "status": EmailStatus.cancelled.value, "priority": 0, "attempts": 0, "max_attempts": 1,
        "next_attempt_at": now, "created_at": now, "updated_at": now,
    }  # fmt: skip
    table = EmailQueue.__table__
    statement = str(
        insert(table)
        .values({column: bindparam(column) for column in (*row, "message_id")})
        .compile(dialect=dialect)
    )
    connection = db.engine.raw_connection()
    try:
        cursor = connection.cursor()
        started = time.perf_counter()
        for i in range(n):
            cursor.execute(statement, {**row, "message_id": f"<serial-{i}-{uuid.uuid4().hex}@herald.local>"})
            connection.commit()
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    with db.SessionLocal() as session:
        session.execute(delete(EmailQueue).where(EmailQueue.status == EmailStatus.cancelled))
        session.commit()
    return {"commits_per_s": round(n / elapsed, 1)}


def run(n: int, database: str, workers: int) -> dict:
    with ExitStack() as stack:
        workdir, url = prepare(stack, database)
        port, journal = start_sink(stack, workdir)
        worker_env = {
            "DATABASE_URL": url, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port),
            "SMTP_USE_TLS": "false", "EMAIL_PROCESSOR_CONCURRENCY": str(workers),
        }  # fmt: skip

        from sqlalchemy import delete, select

        from src.celery_app import app
        from src.db import SessionLocal
        from src.devserver.processes import CeleryWorker
        from src.emails.models import EmailAttempt, EmailQueue, EmailStatus
        from src.emails.service import EmailService
        from src.emails.tasks.email_tasks import process_email_queue, send_email_task

        worker = CeleryWorker(worker_env, workdir / "worker.log", concurrency=workers).start()
        stack.callback(worker.stop)

        def queue_all(n: int, wake: bool) -> tuple[dict[str, float], list[int]]:
            """With wake-ups, each email in its own transaction, as a request queues its emails;
            without, CHUNK per transaction, as a bulk load does."""
            created, ids = {}, []
            chunk = 1 if wake else CHUNK
            for start in range(0, n, chunk):
                with SessionLocal() as session:
                    emails = [
                        EmailService.queue_email(session, wake_worker=wake, **draft(i))
                        for i in range(start, min(n, start + chunk))
                    ]
                    session.commit()
                    for email in emails:
                        created[email.message_id] = email.created_at.timestamp()
                        ids.append(email.id)
            return created, ids

        def measure(mode: str, n: int) -> dict:
            app.control.purge()  # no task of an earlier run may help this one
            with SessionLocal() as session:
                session.execute(delete(EmailAttempt))
                session.execute(delete(EmailQueue))
                session.commit()
            journal.write_text("")
            started = time.time()
            created, ids = queue_all(n, wake=mode == "wakeups")
            queued = time.time()
            if mode == "unbatched":
                for email_id in ids:
                    send_email_task.delay(email_id)
            else:
                process_email_queue.delay()
            deadline = time.time() + max(120, n / 20)
            next_beat = time.time() + BEAT_SECONDS
            while time.time() < deadline:
                with SessionLocal() as session:
                    left = session.scalar(
                        select(EmailQueue.id).where(EmailQueue.status != EmailStatus.sent).limit(1)
                    )
                if left is None:
                    break
                if mode != "unbatched" and time.time() > next_beat:
                    process_email_queue.delay()  # what beat does
                    next_beat += BEAT_SECONDS
                time.sleep(0.2)
            # Wake-ups left over (their emails went out in others' batches) would run during the
            # next raw measurement.
            app.control.purge()
            time.sleep(0.5)
            received = read_journal(journal)
            seen: dict[str, int] = {}
            for record in received:
                seen[record["message_id"]] = seen.get(record["message_id"], 0) + 1
            delivered = sum(1 for message_id in created if message_id in seen)
            last = max((r["at"] for r in received), default=queued)
            first_start = queued if mode != "wakeups" else started
            latencies = [
                (r["at"] - created[r["message_id"]]) * 1000 for r in received if r["message_id"] in created
            ]
            return {
                "emails_per_s": round(delivered / max(last - first_start, 1e-9), 1),
                "p50_ms": round(percentile(latencies, 0.5), 1),
                "p99_ms": round(percentile(latencies, 0.99), 1),
                "delivered": delivered,
                "duplicates": sum(count - 1 for count in seen.values()),
                "lost": n - delivered,
                "queue_s": round(queued - started, 2),
            }

        # The raw rate of the same sink swings by half from one measurement to the next on a shared
        # 2-core machine: it is measured before each mode, and the median of the three is the baseline.
        # A fresh worker's first emails cost more (each process connects to the database and the
        # sink, imports what it imports lazily): a warm-up, not measured, so each mode measures the
        # long-running worker a deployment has.
        for mode in ("batched", "wakeups"):
            measure(mode, WARM_UP)
        raws, modes = [], {}
        for mode in ("batched", "wakeups", "unbatched"):
            raws.append(measure_raw(n, port, journal))
            print("raw:", json.dumps(raws[-1]), flush=True)
            modes[mode] = measure(mode, n)
            print(f"{mode}:", json.dumps(modes[mode]), flush=True)
        # Last, so the rows it writes and deletes cannot slow any mode.
        serials = [measure_serial_commits(n) for _ in range(3)]
        print("serial commits:", json.dumps(serials), flush=True)
        raw = statistics.median(r["emails_per_s"] for r in raws)
        serial = statistics.median(r["commits_per_s"] for r in serials)
        batched, wakeups, unbatched = modes["batched"], modes["wakeups"], modes["unbatched"]
        return {
            **{k: v for k, v in batched.items() if k != "queue_s"},
            "n": n,
            "database": database,
            "worker_processes": workers,
            "raw_emails_per_s": raw,
            "raw_runs": [r["emails_per_s"] for r in raws],
            "ratio_to_raw": {mode: round(m["emails_per_s"] / raw, 2) for mode, m in modes.items()},
            "serial_commits_per_s": serial,
            "serial_runs": [r["commits_per_s"] for r in serials],
            "wakeups_ratio_to_serial_commits": round(wakeups["emails_per_s"] / serial, 2),
            "wakeup_emails_per_s": wakeups["emails_per_s"],
            "wakeup_p50_ms": wakeups["p50_ms"],
            "wakeup_p99_ms": wakeups["p99_ms"],
            "unbatched_emails_per_s": unbatched["emails_per_s"],
            "unbatched_p50_ms": unbatched["p50_ms"],
            "unbatched_p99_ms": unbatched["p99_ms"],
            "exactly_once": all(m["duplicates"] == 0 and m["lost"] == 0 for m in (*raws, *modes.values())),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="emails per run (default 5000)")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument(
        "--workers", type=int, default=4, help="worker processes (default 4, as the README runs a worker)"
    )
    args = parser.parse_args()
    print(json.dumps(run(args.n, args.database, args.workers)))


if __name__ == "__main__":
    main()
