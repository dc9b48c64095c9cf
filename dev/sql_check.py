#!/usr/bin/env python3
"""Check that every migration and every documented query runs on one ClickHouse engine.

    python3 dev/sql_check.py --engine chdb            # modern ClickHouse in-process (PyPI chdb-core)
    python3 dev/sql_check.py --engine http [--url U]  # a server over HTTP, e.g. dev/stack's 18.16

In a fresh database (dropped at the end) it
  1. applies every statement of schemas/sql/migrations/NNNN_*.sql in order,
  2. inserts a few sample rows into every table (timestamps relative to now, so "today" queries match)
     and runs a few checks of the views' deduplication and of exact Decimal(38, 12) sums,
  3. runs every statement of schemas/sql/queries/*.sql and of every ```sql fenced block in docs/**/*.md;
     a SELECT that returns no rows on the sample data fails unless its text contains `-- allow-empty`.
It prints one line per statement, then `checks: N passed, N failed` for step 2, then the final line
`N passed, N failed` counting the statements of steps 1 and 3 only (tests/sql_engines.rs compares that
count with its own count of the files), and exits non-zero if anything failed.

Splitting rule, identical to `schemas::ddl::split_statements` in Rust: a statement ends at a line whose
last non-blank character is `;`, unless that line is a `--` comment line; the `;` is dropped; chunks made
only of blank and `--` comment lines are skipped; text after the last `;` is a statement if it holds code.
A fenced block starts at a line that is ```sql after trimming and ends at the next line that is ```.

Results are read as text (TSVWithNames); decimals are compared with Python's Decimal, because 18.16
prints Decimal(38, 12) with all 12 digits and modern ClickHouse drops trailing zeros.

Only the standard library, plus chdb for --engine chdb.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal, InvalidOperation
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = ROOT / "schemas" / "sql" / "migrations"
QUERIES_DIR = ROOT / "schemas" / "sql" / "queries"
DOCS_DIR = ROOT / "docs"
ALLOW_EMPTY_MARKER = "-- allow-empty"


def split_statements(text: str) -> list[str]:
    """Splits SQL text into statements (see the module docstring for the rule)."""
    statements: list[str] = []
    chunk: list[str] = []

    def flush() -> None:
        statement = "\n".join(chunk).strip()
        chunk.clear()
        if has_code(statement):
            statements.append(statement)

    for line in text.splitlines():
        stripped = line.rstrip()
        if stripped.endswith(";") and not stripped.lstrip().startswith("--"):
            chunk.append(stripped[:-1])
            flush()
        else:
            chunk.append(line)
    flush()
    return statements


def has_code(statement: str) -> bool:
    """Whether a chunk holds anything besides blank lines and `--` comment lines."""
    return any(line.strip() and not line.strip().startswith("--") for line in statement.splitlines())


def sql_blocks_of_markdown(text: str) -> list[str]:
    """The bodies of the ```sql fenced blocks of a markdown text, in order."""
    blocks: list[str] = []
    body: list[str] | None = None
    for line in text.splitlines():
        if body is None:
            if line.strip() == "```sql":
                body = []
        elif line.strip() == "```":
            blocks.append("\n".join(body))
            body = None
        else:
            body.append(line)
    return blocks


def migration_files() -> list[Path]:
    return sorted(path for path in MIGRATIONS_DIR.glob("*.sql") if re.fullmatch(r"\d{4}_\w+\.sql", path.name))


def query_sources() -> list[tuple[str, str]]:
    """(label, sql text) for every query file and every ```sql block in docs/**/*.md."""
    sources = [(str(path.relative_to(ROOT)), path.read_text()) for path in sorted(QUERIES_DIR.glob("*.sql"))]
    if DOCS_DIR.is_dir():
        for path in sorted(DOCS_DIR.rglob("*.md")):
            for index, block in enumerate(sql_blocks_of_markdown(path.read_text()), start=1):
                sources.append((f"{path.relative_to(ROOT)} block {index}", block))
    return sources


class EngineError(Exception):
    pass


class ChdbEngine:
    """Modern ClickHouse in-process, in a temporary folder."""

    name = "chdb"

    def __init__(self, database: str) -> None:
        from chdb import session  # imported here so --engine http works without chdb

        self.folder = tempfile.mkdtemp(prefix="sql_check_chdb_")
        self.session = session.Session(self.folder)
        self.database = database

    def version(self) -> str:
        return self.run("SELECT version()")[1][0][0]

    def setup(self) -> None:
        self.run(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        self.run(f"USE {self.database}")

    def run(self, sql: str) -> tuple[list[str], list[list[str]]]:
        try:
            result = self.session.query(sql, "TSVWithNames")
        except Exception as error:  # chdb raises a plain RuntimeError with the server message
            raise EngineError(str(error).strip()) from None
        return parse_tsv_with_names(result.bytes().decode())

    def close(self) -> None:
        try:
            self.run(f"DROP DATABASE IF EXISTS {self.database}")
        finally:
            self.session.close()
            shutil.rmtree(self.folder, ignore_errors=True)


class HttpEngine:
    """A ClickHouse server over its HTTP interface."""

    name = "http"

    def __init__(self, url: str, database: str, user: str, password: str) -> None:
        self.url = url.rstrip("/") + "/"
        self.database = database
        self.user = user
        self.password = password

    def version(self) -> str:
        return self.run("SELECT version()", database=None)[1][0][0]

    def setup(self) -> None:
        self.run(f"CREATE DATABASE IF NOT EXISTS {self.database}", database=None)

    def run(self, sql: str, database: str | None = "") -> tuple[list[str], list[list[str]]]:
        params = {"default_format": "TSVWithNames"}
        database = self.database if database == "" else database
        if database:
            params["database"] = database
        # Credentials go in a Basic auth header, never in the URL (which access logs keep).
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request = urllib.request.Request(
            self.url + "?" + urllib.parse.urlencode(params),
            data=sql.encode(),
            method="POST",
            headers={"Authorization": f"Basic {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return parse_tsv_with_names(response.read().decode())
        except urllib.error.HTTPError as error:
            raise EngineError(error.read().decode(errors="replace").strip()) from None
        except urllib.error.URLError as error:
            raise EngineError(f"cannot reach {self.url}: {error.reason}") from None

    def close(self) -> None:
        self.run(f"DROP DATABASE IF EXISTS {self.database}", database=None)


def parse_tsv_with_names(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.split("\n") if line != ""]
    if not lines:
        return [], []
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def first_line(text: str) -> str:
    return " ".join(text.split())[:160]


def is_select(statement: str) -> bool:
    code = "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--"))
    return re.match(r"\s*(SELECT|WITH)\b", code, re.IGNORECASE) is not None


def same_value(actual: str, expected: str) -> bool:
    """Text equality, except that decimals compare by value (1.5 == 1.500000000000)."""
    if actual == expected:
        return True
    if re.fullmatch(r"-?\d+\.\d+", actual) and re.fullmatch(r"-?\d+(\.\d+)?", expected):
        try:
            return Decimal(actual) == Decimal(expected)
        except InvalidOperation:
            return False
    return False


def sample_inserts(now: dt.datetime) -> list[str]:
    """A few rows per table, shaped so every documented query has something to return."""

    def ts(moment: dt.datetime) -> str:
        return moment.strftime("'%Y-%m-%d %H:%M:%S'")

    def us(moment: dt.datetime) -> int:
        return int(moment.replace(tzinfo=dt.timezone.utc).timestamp() * 1_000_000)

    hour_ago = now - dt.timedelta(hours=1)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    hour_start = now.replace(minute=0, second=0, microsecond=0)
    usage_columns = (
        "event_id, occurred_at, occurred_at_us, producer, request_id, action_id, attempt, fallback_from_model,"
        " api_key_id, team, workflow, environment, user_id, customer_id, provider, model, endpoint, modality,"
        " input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, images, image_tier,"
        " video_duration_ms, audio_duration_ms, video_resolution, job_id, job_state, status, http_status,"
        " retry_after_ms, accepted, reported_cost_usd, estimated_cost_usd, latency_ms, labels_keys,"
        " labels_values, cost_usd, priced_cost_usd, cost_source, catalog_version, kafka_topic, kafka_partition,"
        " kafka_offset, ingested_at, version"
    )

    def usage(event_id, team, model, attempt, cost, partition, offset, version, modality="text"):
        cost_sql = "NULL" if cost is None else cost
        source = "'unpriced'" if cost is None else "'catalog'"
        return (
            f"('{event_id}', {ts(hour_ago)}, {us(hour_ago)}, 'sdk-python', 'req-{event_id}', 'act-{event_id}',"
            f" {attempt}, NULL, 'ak_1', '{team}', 'chat', 'prod', 'u_1', NULL, 'openai', '{model}',"
            f" 'chat.completions', '{modality}', 1200, 300, 100, 0, 0, NULL, 0, 0, NULL, NULL, NULL,"
            f" 'succeeded', 200, NULL, 1, NULL, {cost_sql}, 850, ['feature'], ['summarize'], {cost_sql},"
            f" {cost_sql}, {source}, 'litellm-1.110.2', 'usage', {partition}, {offset}, {ts(now)}, {version})"
        )

    totals_columns = (
        "scope_kind, scope_key, window_kind, window_tz, source_topic, source_partition, window_start, window_end,"
        " requests, billable_attempts, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, images_draft, images_preview,"
        " images_edit, images_final, images_untiered, video_jobs, video_ms, audio_ms, embedding_tokens, cost_usd,"
        " unpriced_events, retries, fallback_attempts, fallback_cost_usd, accepted_outputs, errors_4xx,"
        " errors_5xx, errors_other, late_events, jobs_in_flight, oldest_pending_job_started_at_us, version,"
        " updated_at"
    )

    def totals(scope_kind, scope_key, kind, start, end, requests, cost, version, partition=0):
        return (
            f"('{scope_kind}', '{scope_key}', '{kind}', 'UTC', 'usage', {partition}, {ts(start)}, {ts(end)},"
            f" {requests}, {requests}, 1000, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, {cost}, 0, 0, 0, 0, 0, 0, 0,"
            f" 0, 0, 0, 0, {version}, {ts(now)})"
        )

    day_end = day_start + dt.timedelta(days=1)
    hour_end = hour_start + dt.timedelta(hours=1)
    month_start = day_start.replace(day=1)
    month_end = (month_start + dt.timedelta(days=32)).replace(day=1)

    def rich(scope_kind, scope_key, kind, start, end, **measures):
        """A partial with the named measures set (others zero), for the analyst queries."""
        names = [name.strip() for name in totals_columns.split(",")]
        values = {
            "scope_kind": f"'{scope_kind}'", "scope_key": f"'{scope_key}'", "window_kind": f"'{kind}'",
            "window_tz": "'UTC'", "source_topic": "'usage'", "source_partition": "0",
            "window_start": ts(start), "window_end": ts(end), "cost_usd": "0", "fallback_cost_usd": "0",
            "version": "1", "updated_at": ts(now),
        }
        values.update({name: str(value) for name, value in measures.items()})
        return "(" + ", ".join(values.get(name, "0") for name in names) + ")"

    rich_rows = ", ".join([
        rich("workflow", "chat", "day", day_start, day_end, requests=10, billable_attempts=12,
             accepted_outputs=8, fallback_attempts=2, fallback_cost_usd="0.040000000000",
             cost_usd="0.800000000000"),
        rich("model", "gpt-4o", "day", day_start, day_end, requests=10, input_tokens=12000,
             output_tokens=3000, cached_input_tokens=6000),
        rich("team", "search", "day", day_start, day_end, requests=10, input_tokens=12000,
             output_tokens=3000, cached_input_tokens=4800, images_draft=6, images_final=2),
        rich("customer_id", "c-1", "month", month_start, month_end, requests=3, video_jobs=3,
             jobs_in_flight=2, oldest_pending_job_started_at_us=us(hour_ago)),
    ])
    return [
        # e2 is archived twice (a producer re-send, then a re-read): the copy with version 3 must win.
        f"INSERT INTO usage_events_raw ({usage_columns}) VALUES"
        f" {usage('e1', 'ml-research', 'gpt-4o', 1, '0.000000000001', 0, 10, 1)},"
        f" {usage('e2', 'ml-research', 'gpt-4o-mini', 2, '1.25', 1, 20, 2)},"
        f" {usage('e3', 'web', 'dall-e-3', 1, None, 0, 11, 1, 'image')}",
        f"INSERT INTO usage_events_raw ({usage_columns}) VALUES"
        f" {usage('e2', 'ml-research', 'gpt-4o-mini', 2, '1.25', 1, 21, 3)}",
        f"INSERT INTO window_partials ({totals_columns}) VALUES"
        f" {totals('team', 'ml-research', 'day', day_start, day_end, 2, '1.250000000000', 1)},"
        f" {totals('team', 'ml-research', 'hour', hour_start, hour_end, 2, '1.250000000001', 1)},"
        f" {totals('team', 'web', 'day', day_start, day_end, 1, '0.5', 1)}",
        # A newer absolute partial of the same day window (it must replace the first), and the partial of
        # another input partition (it must be added).
        f"INSERT INTO window_partials ({totals_columns}) VALUES {rich_rows}",
        f"INSERT INTO window_partials ({totals_columns}) VALUES"
        f" {totals('team', 'ml-research', 'day', day_start, day_end, 3, '1.250000000001', 2)},"
        f" {totals('team', 'ml-research', 'day', day_start, day_end, 4, '0.000000000002', 7, partition=1)}",
        "INSERT INTO aggregator_checkpoints (consumer_group, topic, partition, next_offset, replay_from, state,"
        f" version, updated_at) VALUES ('aggregator', 'usage', 0, 12, 3, '{{}}', 12, {ts(now)}),"
        f" ('aggregator', 'usage', 0, 14, 3, '{{}}', 14, {ts(now)})",
        "INSERT INTO decisions (decision_id, key, policy_id, scope_keys, scope_values, action, degrade_to, reason,"
        " unit, observed, limit_value, window_kind, window_start, window_end, issued_at, issued_at_us, expires_at,"
        f" version) VALUES ('d1', 'ak_1', 'p-ml-daily', ['team'], ['ml-research'], 'degrade', 'gpt-4o-mini',"
        f" 'daily budget 90% used', 'usd', 90.000000000001, 100, 'day', {ts(day_start)}, {ts(day_end)}, {ts(now)},"
        f" {us(now)}, NULL, 1)",
        "INSERT INTO alerts (alert_id, dedup_key, policy_id, scope_keys, scope_values, kind, severity,"
        " threshold_percent, unit, observed, limit_value, window_kind, window_start, window_end, owner, message,"
        f" raised_at, raised_at_us) VALUES ('a1', 'p-ml-daily/team=ml-research/day/90', 'p-ml-daily', ['team'],"
        f" ['ml-research'], 'soft_threshold', 'warning', 90, 'usd', 90.000000000001, 100, 'day', {ts(day_start)},"
        f" {ts(day_end)}, 'ml-research', 'ml-research used 90% of its daily budget', {ts(now)}, {us(now)})",
        "INSERT INTO approvals (approval_id, policy_id, scope_keys, scope_values, new_limit, valid_until, reason,"
        f" approved_by, requested_at, status, decided_at) VALUES ('ap1', 'p-ml-daily', ['team'], ['ml-research'],"
        f" 150, {ts(day_end)}, 'launch day', 'lead@example.com', {ts(hour_ago)}, 'applied', {ts(now)})",
        "INSERT INTO dead_letters (service, source_topic, source_partition, source_offset, error_kind,"
        " error_message, payload_base64, key_base64, failed_at) VALUES"
        f" ('ingest', 'usage', 0, 7, 'decode', 'not avro', 'AAEC', NULL, {ts(hour_ago)}),"
        f" ('ingest', 'usage', 0, 7, 'decode', 'not avro (replayed)', 'AAEC', 'a2V5', {ts(now)})",
    ]


# (what is checked, query, expected rows as text). The views must hide duplicates and stale versions even
# when a filter matches only the stale copy, and decimal sums must be exact.
CHECKS = [
    ("usage_events shows each event_id once", "SELECT event_id, count() FROM usage_events GROUP BY event_id ORDER BY event_id",
     [["e1", "1"], ["e2", "1"], ["e3", "1"]]),
    ("usage_events keeps the highest version", "SELECT kafka_offset, version FROM usage_events WHERE event_id = 'e2'",
     [["21", "3"]]),
    ("usage_events hides a stale copy from filters", "SELECT count() FROM usage_events WHERE kafka_offset = 20",
     [["0"]]),
    ("usage_events sums decimals exactly", "SELECT sum(cost_usd), toString(sum(cost_usd)) FROM usage_events",
     [["1.250000000001", "1.250000000001"]]),
    ("the raw table keeps every archived copy", "SELECT count() FROM usage_events_raw", [["4"]]),
    ("window_totals_current adds the newest partial of each partition",
     "SELECT requests, cost_usd, partials FROM window_totals_current"
     " WHERE scope_key = 'ml-research' AND window_kind = 'day'", [["7", "1.250000000003", "2"]]),
    ("window_totals_current hides a stale partial from filters",
     "SELECT count() FROM window_totals_current WHERE requests = 6 AND scope_key = 'ml-research'"
     " AND window_kind = 'day'", [["0"]]),
    ("a million 1e-12 sum exactly",
     "SELECT toString(sum(toDecimal128('0.000000000001', 12))) FROM numbers(1000000)", [["0.000001"]]),
    ("aggregator_checkpoints FINAL keeps the newest offset",
     "SELECT next_offset FROM aggregator_checkpoints FINAL", [["14"]]),
    ("dead_letters collapse a replayed failure",
     "SELECT count(), any(error_message) FROM dead_letters FINAL", [["1", "not avro (replayed)"]]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["chdb", "http"], required=True)
    parser.add_argument(
        "--url",
        default=os.environ.get("QUOTAFLOW_TEST_CLICKHOUSE") or os.environ.get("CLICKHOUSE_URL") or "http://127.0.0.1:8123",
        help="server for --engine http (env QUOTAFLOW_TEST_CLICKHOUSE or CLICKHOUSE_URL)",
    )
    parser.add_argument("--user", default=os.environ.get("CLICKHOUSE_USER", "default"))
    parser.add_argument("--password", default=os.environ.get("CLICKHOUSE_PASSWORD", ""))
    args = parser.parse_args()

    database = f"sql_check_{uuid.uuid4().hex[:12]}"
    try:
        engine = ChdbEngine(database) if args.engine == "chdb" else HttpEngine(args.url, database, args.user, args.password)
        print(f"engine {engine.name} {engine.version()}, database {database}")
        engine.setup()
    except Exception as error:  # cannot even start: report it in the same shape
        print(f"FAIL setup: {first_line(str(error))}")
        print("0 passed, 1 failed")
        return 1

    passed = failed = 0
    checks_passed = checks_failed = 0
    try:
        for path in migration_files():
            for index, statement in enumerate(split_statements(path.read_text()), start=1):
                label = f"{path.relative_to(ROOT)} #{index}"
                try:
                    engine.run(statement)
                    passed += 1
                    print(f"ok   {label}: {first_line(strip_comments(statement))[:80]}")
                except EngineError as error:
                    failed += 1
                    print(f"FAIL {label}: {first_line(str(error))}")

        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
        for index, insert in enumerate(sample_inserts(now), start=1):
            try:
                engine.run(insert)
                checks_passed += 1
                print(f"ok   sample insert {index}: {first_line(insert)[:80]}")
            except EngineError as error:
                checks_failed += 1
                print(f"FAIL sample insert {index}: {first_line(str(error))}")
        for what, sql, expected in CHECKS:
            try:
                _, rows = engine.run(sql)
                good = len(rows) == len(expected) and all(
                    len(row) == len(want) and all(same_value(a, e) for a, e in zip(row, want))
                    for row, want in zip(rows, expected)
                )
                error_text = f"got {rows}, expected {expected}"
            except EngineError as error:
                good, error_text = False, first_line(str(error))
            if good:
                checks_passed += 1
                print(f"ok   check: {what}")
            else:
                checks_failed += 1
                print(f"FAIL check: {what}: {error_text}")

        for label, text in query_sources():
            for index, statement in enumerate(split_statements(text), start=1):
                try:
                    _, rows = engine.run(statement)
                except EngineError as error:
                    failed += 1
                    print(f"FAIL {label} #{index}: {first_line(str(error))}")
                    continue
                if not rows and is_select(statement) and ALLOW_EMPTY_MARKER not in statement:
                    failed += 1
                    print(f"FAIL {label} #{index}: no rows on the sample data (mark `{ALLOW_EMPTY_MARKER}` if expected)")
                    continue
                passed += 1
                print(f"ok   {label} #{index}: {len(rows)} rows")
    finally:
        try:
            engine.close()
        except Exception as error:
            print(f"warning: could not drop {database}: {first_line(str(error))}")

    print(f"checks: {checks_passed} passed, {checks_failed} failed")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and checks_failed == 0 else 1


def strip_comments(statement: str) -> str:
    return "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--"))


if __name__ == "__main__":
    sys.exit(main())
