"""``duisgw audit list|show|release|export|dead|rejects --config FILE``: the decision record of a gateway.

Reads the state named by the service configuration: the decision state (messages with their original
bytes, the append-only decision log) in ``[store] path`` (``[pipeline] state_in_store``, the default)
or ``[pipeline] state_dir/engine.sqlite3``; the transport tables (routes, outbox, rejects, operator
re-queues) in ``[store] path``. Works while the gateway runs (SQLite WAL: readers never block it; the
few writes are one short transaction each, waiting at most ``[store] busy_timeout`` for the lock). The
read commands (``list``, ``show``, ``export``, ``dead list``, ``rejects``) open every store read-only
(``mode=ro``: they see the commits still in the ``-wal``) and write nothing into it, a stopped gateway's
files included; only ``release``, ``dead requeue`` and ``archive`` write.

* ``list`` — the latest decision of every inline message (of every *life* of one: a message id re-delivered
  after the engine's retention was decided afresh), in first-decision order, filtered by
  ``--decision``, ``--reason`` and ``--since`` (decision time, ISO-8601); ``--limit N`` the first ``N``
  of them in that order (0, the default: all); ``--json`` for one JSON object a line. On shared state
  (``[state] backend = "redis"``) each line also names the instance that decided (``decided_by``). A ``--since``
  span holding at most a quarter of the log is read through the index by decision time (the same lines); a store
  this version never opened read-write has none yet: the log is walked from its start, and stderr says so.
* ``show ID`` — one message: its decision history with evidence, destination, outbox delivery
  state, operator re-queues of its dead letters; ``--bytes`` writes the original bytes (unchanged)
  to stdout instead.
* ``release ID --operator NAME --note TEXT`` — forward a suppressed message to its DNO: the release
  is recorded in the decision log (``release-forward`` / ``operator-release`` with operator and
  note), then the original bytes are put in the destination's outbox queues (a running gateway
  delivers them within its poll interval; a stopped one at its next start). A release that cannot be
  written within ``[store] busy_timeout`` records nothing (exit 2); one whose outbox row cannot be is
  left, recorded, to the gateway's redelivery scan (exit 0, said so). On shared state a release first
  takes the shared release marker of the message's current life in Redis: exactly once across instances, a
  second release of that life (from any instance's configuration) is exit 1, naming who released it and
  when; a later life (re-delivered after the engine's retention, suppressed afresh) is released on its own.
  A message whose latest decision is not a suppression is not released (exit 1), nor is one quarantined under its
  unsigned id (its own signature failed) whose same bytes were taken in since under their verified id (exit 1,
  naming it: forwarded, the DNO has them; suppressed, release that one). The release of an AD1 also
  releases the restoration alerts still suppressed as paired with it (``restoration-paired``, evidence: that AD1), each its own release (note: ``follows the release of AD1: NOTE``), queued after
  the AD1 in the same outbox transaction and printed; ``--without-restoration`` releases the AD1 alone. Only
  those paired with the life released (decided at or after its suppression; one decided at that very instant only
  when recorded after it, or on shared state as the shared pairing index says): one paired with an earlier life of
  the message id stays suppressed. On shared state the restorations another instance paired with that life are
  named on stderr (their bytes are in its store), found in the AD1's shared pairing index (each pairing with the
  life it was paired with); a life suppressed before that index began (or within the engine's retention after:
  a rolling upgrade) is also searched in the shared suppression index of the days such a pairing can be decided on
  (the life's suppression up to the engine's retention). A pairing the index names with another life of the AD1
  is not this life's, even when decided at the very instant of this life's suppression.
* ``export --date YYYY-MM-DD`` — the day's suppressions per DNO as CSV (``date, destination,
  message_id, kind, ch, mpan, esme, start_datetime, reason, evidence_message_ids, status, decided_at,
  released_at, released_by, release_note``: ``decided_at`` the suppression decision's time as stored; the
  last three empty unless ``released``, then the operator release's time, operator and note, from that life's
  latest decision, or on shared state from the confirmed shared release), for the DNO to reconcile: the
  suppressions decided on that UTC date, one row each (a message's, or each life's of a message id
  re-delivered after the engine's retention and suppressed afresh)
  (``--tz ZONE``: on that civil day of an IANA zone, ``Europe/London`` for the GB day; the header's
  first column is then ``date_ZONE`` and the files ``suppressions-DATE-ZONE-DESTINATION.csv``);
  A cell a spreadsheet would run as a formula (first character ``=``, ``+``, ``-``, ``@``, tab, carriage
  return: e.g. an MPxN as the DSP sent it) is written with a leading ``'``; cells holding a comma, quote,
  line feed or carriage return are quoted.
  ``--destination`` filters (one the gateway does not know is exit 2), ``--out-dir`` writes one file
  per DNO, every configured one, the header alone on a day without suppressions (a folder or file
  that cannot be written is one line on stderr and exit 2). ``list`` and ``export`` read the decision
  log as a stream (it is never pruned: memory must not grow with it). On shared state
  (``[state] backend = "redis"``) ``export`` reads the shared suppression index instead: every
  instance's suppressions, each life of a message once, from any instance's configuration; ``--local`` only
  those this instance decided itself (see docs/SCALE-OUT.md).
* ``dead list [--queue Q]`` — the dead-lettered outbox rows (seq, queue, message id, destination,
  attempts, last error, enqueued and dead-lettered times); ``--json`` for one JSON object a line.
* ``dead requeue (--all | ID...) [--queue Q] --operator NAME --note TEXT`` — put dead letters back in
  line (pending, attempts reset, at their original position) in ONE transaction that also records
  each one (who, why, when, its attempts and last error) in ``outbox_requeues``; a running gateway
  delivers them once their queue is idle (it scans every ``outbox.poll_interval``). Named ids are all
  or nothing: if one has no dead letter (in ``--queue``), nothing is re-queued.
* ``archive --before TIME --to FILE`` — move the messages settled before ``TIME`` (arrived, last updated,
  idempotency key last seen and every decision taken before it; observed, suppressed, or forwarded and in no
  outbox queue still pending or dead, by their row and their latest decision) with their decisions, operator
  releases and routes out of the decision store into the archive file ``FILE`` (created, or added to: one
  store's file), in chunks of ``--chunk`` messages (each one write transaction: the archive's rows durable
  before the live store's are deleted). ``TIME`` must be at least the engine's retention before the gateway
  clock stored with the state (exit 2 otherwise, nothing moved); a ``FILE`` that is another store's archive,
  or holds other rows under this store's numbers, is exit 2, nothing moved. SQLite state only (exit 2 on
  shared state). ``list``, ``show`` and ``export`` read an archive with ``--archive FILE`` instead of the
  live store; ``show --archive`` lists every row of the id (``rows``: one per life), ``--bytes --seq N``
  writes row ``N``'s bytes (see :mod:`gateway.store.archive`). Exit 1 when nothing was moved.
* ``rejects [--since T] [--reason R] [--limit N]`` — the rejected inputs kept with their reason
  (id, received_at, lane, user, reason, detail, size), the newest ``N`` (default 100, 0 = all) in
  order; ``rejects show ID`` one of them, ``--raw`` its bytes exactly as received, to stdout.

``--operator`` and ``--note`` must not be blank (who and why are the point of the record). Every text
argument must be valid UTF-8 (the stores keep UTF-8): one that is not is exit 2, nothing done.

Exit codes: 0 done, 1 nothing matched / not releasable / not re-queueable, 2 unusable arguments,
configuration or state.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.service.outbox import DeadLetter, RejectInfo
    from gateway.store.shared_audit import SharedAudit
    from gateway.store.sqlite import DecisionReads, SqliteStore

__all__ = ["register"]

_DISPOSITION = {
    "forward": "forward",
    "release-forward": "forward",
    "suppress": "suppress",
    "release-suppress": "suppress",
    "hold": "hold",
}
EXPORT_COLUMNS = (
    "date",
    "destination",
    "message_id",
    "kind",
    "ch",
    "mpan",
    "esme",
    "start_datetime",
    "reason",
    "evidence_message_ids",
    "status",
    # added at the end (readers indexing the columns above keep working): when the suppression was decided,
    # and for a released one when, by whom and why (empty unless released)
    "decided_at",
    "released_at",
    "released_by",
    "release_note",
)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "audit", help="list, show, release and export gateway decisions; dead letters; rejected inputs"
    )
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", "-c", type=Path, required=True, help="the gateway's TOML configuration")

    def reads_archive(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--archive",
            type=Path,
            metavar="FILE",
            help="read this archive file (made by `audit archive`) instead of the gateway's live store",
        )

    ls = actions.add_parser("list", help="latest decision of every inline message")
    common(ls)
    ls.add_argument("--decision", choices=("forward", "suppress", "hold"), help="only this final decision")
    ls.add_argument("--reason", help="only this reason code (e.g. activation-window)")
    ls.add_argument("--since", help="only decisions taken at or after this ISO-8601 time")
    ls.add_argument(
        "--limit",
        type=int,
        default=0,
        metavar="N",
        help="only the first N matching messages of the listing's order (first decision first; default 0 = all)",
    )
    ls.add_argument("--json", action="store_true", help="one JSON object a line")
    reads_archive(ls)
    ls.set_defaults(func=_text_checked(_list))

    show = actions.add_parser("show", help="one message: decision history, evidence, delivery")
    common(show)
    show.add_argument("message_id")
    show.add_argument("--bytes", action="store_true", help="write the original bytes to stdout")
    show.add_argument(
        "--seq",
        type=int,
        metavar="N",
        help="with --archive and --bytes: the archive's row number N (a message id archived more than once, "
        "re-delivered after its retention, has one row per life: `show --archive` lists them under rows)",
    )
    reads_archive(show)
    show.set_defaults(func=_text_checked(_show))

    rel = actions.add_parser("release", help="forward a suppressed message to its DNO")
    common(rel)
    rel.add_argument("message_id")
    rel.add_argument("--operator", required=True, help="who releases it (recorded; not blank)")
    rel.add_argument("--note", required=True, help="why (recorded; not blank)")
    rel.add_argument(
        "--without-restoration",
        action="store_true",
        help="release only this message, not the restoration alert(s) suppressed as paired with it "
        "(default: released too, queued after it)",
    )
    rel.set_defaults(func=_text_checked(_release))

    exp = actions.add_parser("export", help="daily suppression summary per DNO (CSV)")
    common(exp)
    exp.add_argument("--date", required=True, help="the day, YYYY-MM-DD (a UTC day unless --tz)")
    exp.add_argument(
        "--tz",
        metavar="ZONE",
        help="the day is the civil day of this IANA time zone, e.g. Europe/London for the GB day (23 or 25 "
        "hours on clock-change days); said in the CSV header and the file names (default: the UTC day)",
    )
    exp.add_argument("--destination", help="only this DNO destination")
    exp.add_argument("--out-dir", type=Path, help="write suppressions-<date>-<destination>.csv files here")
    exp.add_argument(
        "--local",
        action="store_true",
        help="shared state: only the suppressions this instance decided, from its own audit (default: every "
        "instance's, from the shared suppression index)",
    )
    reads_archive(exp)
    exp.set_defaults(func=_text_checked(_export))

    arc = actions.add_parser(
        "archive", help="move settled messages and their decisions from before a time into an archive file"
    )
    common(arc)
    arc.add_argument(
        "--before",
        required=True,
        metavar="TIME",
        help="ISO-8601 date or time (UTC unless it has an offset): the messages that arrived and were last "
        "decided before it; at most the engine's retention before the gateway clock",
    )
    arc.add_argument(
        "--to", required=True, type=Path, metavar="FILE", help="the archive file (created, or added to)"
    )
    arc.add_argument(
        "--chunk", type=int, default=100, metavar="N", help="messages per write transaction (default 100)"
    )
    arc.set_defaults(func=_text_checked(_archive))

    dead = actions.add_parser("dead", help="dead-lettered outbox rows: list, requeue")
    dead_actions = dead.add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    dl = dead_actions.add_parser("list", help="the dead-lettered outbox rows, in queue order")
    common(dl)
    dl.add_argument("--queue", help="only this outbox queue (e.g. http:dno-a)")
    dl.add_argument("--json", action="store_true", help="one JSON object a line")
    dl.set_defaults(func=_text_checked(_dead_list))
    dr = dead_actions.add_parser(
        "requeue", help="put dead letters back in line for delivery (recorded with who and why)"
    )
    common(dr)
    dr.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID", help="the messages whose dead letters to requeue")
    dr.add_argument("--all", action="store_true", help="every dead letter (of --queue)")
    dr.add_argument("--queue", help="only this outbox queue (e.g. http:dno-a)")
    dr.add_argument("--operator", required=True, help="who requeues them (recorded; not blank)")
    dr.add_argument("--note", required=True, help="why (recorded; not blank)")
    dr.set_defaults(func=_text_checked(_dead_requeue))

    rj = actions.add_parser(
        "rejects",
        help="rejected inputs: list them, or `rejects show ID`",
        usage="%(prog)s --config FILE [--since TIME] [--reason R] [--limit N] [--json]\n"
        "       %(prog)s show ID --config FILE [--raw]",
    )
    rj.add_argument("--config", "-c", type=Path, metavar="FILE", help="the gateway's TOML configuration (required)")
    rj.add_argument("--since", metavar="TIME", help="only rejects received at or after this ISO-8601 time")
    rj.add_argument("--reason", metavar="R", help="only this reason code")
    rj.add_argument(
        "--limit", type=int, default=100, metavar="N", help="the newest N matching rejects (default 100, 0 = all)"
    )
    rj.add_argument("--json", action="store_true", help="one JSON object a line")
    rj.set_defaults(func=_text_checked(_rejects_list))
    rj_actions = rj.add_subparsers(dest="rejects_command", metavar="show", prog=rj.prog)
    # `rejects show ID --config F` and `rejects --config F show ID` both work: one of them is required
    rs = rj_actions.add_parser(
        "show", help="one reject: its record, or --raw its bytes", usage="%(prog)s ID --config FILE [--raw]"
    )
    rs.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,  # keeps a --config given before `show`
        help="the gateway's TOML configuration (required, here or before `show`)",
    )
    rs.add_argument("reject_id", type=int, metavar="ID")
    rs.add_argument("--raw", action="store_true", help="write the rejected bytes, unchanged, to stdout")
    rs.set_defaults(func=_text_checked(_rejects_show))


def _fail(msg: str, code: int = 2) -> int:
    print(f"duisgw audit: {msg}", file=sys.stderr)
    return code


def _shown(text: str | None) -> str:
    """``text`` for a terminal: control and format characters (ESC sequences, BEL, CR, bidirectional
    overrides ...) as ``\\xNN`` / ``\\uNNNN``. A reject's user comes from an unauthenticated URL path and
    details and errors quote what others sent: printed raw, they could rewrite the operator's screen.
    (``--json`` escapes them already.)"""
    out = str(text or "")
    if out.isprintable():
        return out
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in out)


def _text_checked(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``func``, run only when every text argument is valid UTF-8 (the stores keep UTF-8 text). An
    argument holding bytes that are not (``--operator $'\\xff'``: Python keeps them as surrogates) is
    refused with one line and exit 2, before anything is opened or recorded. Paths are not text: a
    file name need not be UTF-8."""

    def run(args: argparse.Namespace) -> int:
        for name, value in vars(args).items():
            for text in value if isinstance(value, list) else [value]:
                if not isinstance(text, str):
                    continue
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    option = "MESSAGE_ID" if name.startswith("message_id") else "--" + name.replace("_", "-")
                    shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
                    return _fail(f"{option}: not valid UTF-8 text ('{shown}'); nothing done")
        return func(args)

    return run


def _who_and_why(args: argparse.Namespace) -> tuple[str, str] | int:
    """``--operator`` and ``--note`` without surrounding white space; a failure (2) when either is blank."""
    operator, note = str(args.operator).strip(), str(args.note).strip()
    blank = [name for name, value in (("--operator", operator), ("--note", note)) if not value]
    if blank:
        return _fail(f"{' and '.join(blank)} must not be blank: who acts and why is recorded; nothing done")
    return operator, note


class _State:
    """The decision state and the transport database of one gateway configuration.

    ``engine`` reads the decision state through a read-only connection (:class:`DecisionReader`): a read
    command (``list``, ``show``, ``export``) writes nothing into a production store, running or stopped (no
    journal mode, schema, checkpoint thread, nor the checkpoint and removal of the ``-wal`` that closing a
    read-write connection does). Only ``writable`` (``release``) opens the engine store itself (``writer``)."""

    def __init__(self, config_path: Path, archive: Path | None = None, *, writable: bool = False) -> None:
        """``archive``: read that archive file (``audit archive``: the decision store's tables and the
        routes, no outbox) instead of the configuration's live stores."""
        from gateway.service.serve import engine_db_path, load_state_config
        from gateway.store.archive import is_archive
        from gateway.store.sqlite import DecisionReader
        from gateway.store.sqlite import SqliteStore as EngineStore

        self.config, _base = load_state_config(config_path)
        self.archive = archive
        engine_db = engine_db_path(self.config) if archive is None else archive
        if not engine_db.is_file():
            raise FileNotFoundError(f"no {'decision state' if archive is None else 'archive'} at {engine_db}")
        if archive is not None and not is_archive(archive):
            raise FileNotFoundError(f"{archive} is not an archive made by `duisgw audit archive`")
        busy_timeout = float(self.config.store.busy_timeout)
        # (refuses a file without decision state, and writes nothing into one)
        reader = DecisionReader(engine_db, busy_timeout=busy_timeout)
        self.store: SqliteStore | None = None
        if writable:
            reader.close()
            self.store = EngineStore(engine_db, busy_timeout=busy_timeout)
        self.engine: DecisionReads = reader if self.store is None else self.store
        self.outbox_path = Path(self.config.store.path) if archive is None else archive

    @property
    def writer(self) -> SqliteStore:
        """The engine store, opened read-write (``writable``: ``release`` only)."""
        if self.store is None:
            raise RuntimeError("the decision state was opened read-only")
        return self.store

    _reader: sqlite3.Connection | None = None
    _shared: SharedAudit | None = None

    @property
    def is_shared(self) -> bool:
        """Whether the decisions are shared with other instances (``[state] backend = "redis"``); never
        for an archive (made from SQLite state only)."""
        return self.config.state.backend == "redis" and self.archive is None

    def shared(self) -> SharedAudit:
        """The shared audit facts in Redis, reached with the gateway's own ``[state]`` settings (the same
        refusal of a password over plain ``redis://`` off loopback: :class:`SharedStateError`)."""
        if self._shared is None:
            from gateway.service.config import transport_security_problems
            from gateway.store.shared_audit import SharedAudit

            st = self.config.state
            problems = transport_security_problems(self.config)
            refused = [p for p in problems if p.startswith("state.redis_url:")]
            if refused:
                raise SharedStateError("; ".join(refused))
            self._shared = SharedAudit(st.redis_url, st.key_prefix, st.decision_log)
        return self._shared

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        self.engine.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _outbox_query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of the transport store (one read-only connection, kept: ``export`` and ``list`` look up
        one route per message); none when there is no such store or table yet."""
        if self._reader is None:
            if not self.outbox_path.is_file():
                return []
            from gateway.store.sqlite import connect_read_only

            self._reader = connect_read_only(self.outbox_path)
        try:
            return list(self._reader.execute(sql, params).fetchall())
        except sqlite3.OperationalError:  # no routes table yet
            return []

    def destinations(self) -> set[str]:
        """The destinations the routes name (a destination since removed from the configuration included)."""
        return {str(r[0]) for r in self._outbox_query("SELECT DISTINCT destination FROM routes")}

    def route(self, message_id: str) -> tuple[str, str] | None:
        rows = self._outbox_query("SELECT destination, kind FROM routes WHERE message_id = ?", (message_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    def deliveries(self, message_id: str) -> list[dict[str, Any]]:
        rows = self._outbox_query(
            "SELECT queue, state, attempts, last_error, enqueued_at, done_at FROM outbox WHERE message_id = ? "
            "ORDER BY seq",
            (message_id,),
        )
        keys = ("queue", "state", "attempts", "last_error", "enqueued_at", "done_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def requeues(self, message_id: str) -> list[dict[str, Any]]:
        """The operator re-queues of this message's dead letters (``dead requeue``), oldest first."""
        from gateway.service.outbox import requeues

        if not self.outbox_path.is_file():
            return []
        try:
            with _reading(self.outbox_path, 5.0) as conn:
                return requeues(conn, message_id)
        except sqlite3.OperationalError:  # as _outbox_query: no transport store to read
            return []


class SharedStateError(Exception):
    """The shared state cannot be used as configured (``state.redis_url: plaintext_credentials``)."""


def _open(args: argparse.Namespace, *, writable: bool = False) -> _State | int:
    from gateway.errors import DuisgwError
    from gateway.service.config import ConfigError

    try:
        return _State(args.config, getattr(args, "archive", None), writable=writable)
    except ConfigError as exc:
        return _fail("; ".join(exc.problems))
    except (DuisgwError, OSError, sqlite3.Error) as exc:
        return _fail(str(exc))


def _eui(value: Any) -> str:
    from gbcs.eui import format_eui

    return format_eui(int(value)) if isinstance(value, int) else ""


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _decided_at(row: dict[str, Any]) -> datetime | None:
    raw = row.get("decided_at")
    return _parse_time(str(raw)) if raw else None


# ------------------------------------------------------------------------------------------ list


def _list(args: argparse.Namespace) -> int:
    if args.limit < 0:
        return _fail(f"--limit: must be 0 (all) or more, got {args.limit}")
    state = _open(args)
    if isinstance(state, int):
        return state
    try:
        since = _parse_time(args.since) if args.since else None
    except ValueError:
        state.close()
        return _fail(f"--since: not an ISO-8601 time: {args.since!r}")
    actions = None if not args.decision else [a for a, d in _DISPOSITION.items() if d == args.decision]
    # shared state: the deciding instance, a column of its own (absent from the single-node listing,
    # whose output stays as it was; null / "-" for a row that names none, e.g. one from before the upgrade)
    shared = state.is_shared
    # read as a stream in the listing's order: --limit reads no further than the lines it prints (and the one
    # that says more match); --since is also checked in SQL, to the second, so that the rows before it are
    # not parsed here (the exact time is compared below). A --since span that is a small part of the log is read
    # through the index by decision time (the same rows in the same order); a store an earlier version wrote and
    # this one never opened read-write has none: the log is walked from its start, and stderr says so
    try:
        plan = None if since is None else state.engine.since_plan(since)
    except sqlite3.Error as exc:
        state.close()
        return _fail(f"{state.engine.path}: {exc}")
    rows = state.engine.latest_decisions(actions=actions, reason=args.reason, since=since, by_time=plan == "index")
    if plan == "no-index":
        print("--since: this decision store has no index by decision time yet (made when this version's gateway "
              "or `audit release` opens it read-write): the log was read from its start",
              file=sys.stderr)  # fmt: skip
    try:
        n = 0
        more = False
        unread = 0  # decisions whose time cannot be read (a log another tool wrote): listed, not judged
        for row in rows:
            mid = str(row["message_id"])
            decision = _DISPOSITION.get(str(row.get("action")), str(row.get("action")))
            if since is not None:
                try:
                    at = _decided_at(row)
                except ValueError:
                    unread += 1  # (an audit does not drop what it cannot date: said on stderr)
                else:
                    if at is None or at < since:
                        continue
            if args.limit and n == args.limit:
                more = True  # one more matches: said on stderr; the rest of the log is not read
                break
            dest, kind = state.route(mid) or ("", "")
            item = {
                "message_id": mid,
                "decision": decision,
                "action": row.get("action"),
                "reason": row.get("reason"),
                "kind": kind or row.get("event_kind", ""),
                "destination": dest,
                "decided_at": row.get("decided_at"),
                "event_time": row.get("event_time"),
            }
            if shared:
                item["decided_by"] = row.get("decided_by")
            n += 1
            if args.json:
                print(json.dumps(item, separators=(",", ":")))
            else:
                by = f"  {_shown(str(item['decided_by'] or '')) or '-'}" if shared else ""
                print(f"{_shown(item['decided_at']) or '-':<33} {_shown(decision):<9} {_shown(item['reason']):<22} "
                      f"{_shown(dest) or '-':<10} {_shown(mid)}{by}")  # fmt: skip
        if more:
            print(f"{n} message(s): the first {n} (--limit {args.limit}); more match (--limit 0 for all)",
                  file=sys.stderr)  # fmt: skip
        elif not args.json:
            print(f"{n} message(s)", file=sys.stderr)
        if unread:
            print(f"{unread} of them listed with a decided_at that is not an ISO-8601 time: --since cannot judge it",
                  file=sys.stderr)  # fmt: skip
        return 0 if n else 1
    except sqlite3.Error as exc:
        return _fail(f"{state.engine.path}: {exc}")
    finally:
        rows.close()  # a --limit that stopped early ends the read statement before the store closes
        state.close()


# ------------------------------------------------------------------------------------------ show


def _show(args: argparse.Namespace) -> int:
    from gateway.store.archive import archived_bytes, archived_rows

    if getattr(args, "seq", None) is not None and (args.archive is None or not args.bytes):
        return _fail("--seq: only with --archive and --bytes")
    state = _open(args)
    if isinstance(state, int):
        return state
    try:
        status = state.engine.status(args.message_id)
        if status is None:
            where = "" if state.archive is not None else " (one moved by `audit archive`: --archive FILE)"
            return _fail(f"unknown message {args.message_id!r}{where}", 1)
        # an archive keeps a row per life of a message id (archived, re-delivered after its retention,
        # archived again): every one is shown, the latest's status first
        rows = [] if state.archive is None else archived_rows(state.archive, args.message_id)
        if rows:
            status = str(rows[-1]["status"])
        if args.bytes:
            if state.archive is None:
                raw = state.engine.original_bytes(args.message_id)
            else:
                chosen = [r for r in rows if args.seq is None or r["seq"] == args.seq]
                numbers = ", ".join(str(r["seq"]) for r in rows)
                if not chosen:
                    return _fail(
                        f"{args.message_id!r} has no row {args.seq} in this archive (its rows: {numbers})", 1
                    )
                if len(chosen) > 1:
                    return _fail(
                        f"{args.message_id!r} has {len(chosen)} rows in this archive ({numbers}), one per life: "
                        "name one with --seq",
                        1,
                    )
                raw = archived_bytes(state.archive, int(chosen[0]["seq"]))
            if raw is None:
                return _fail("the original bytes of this message were not kept", 1)
            sys.stdout.buffer.write(bytes(raw))
            sys.stdout.buffer.flush()
            return 0
        route = state.route(args.message_id)
        out: dict[str, Any] = {
            "message_id": args.message_id,
            "status": status,
            "destination": route[0] if route else None,
            "kind": route[1] if route else None,
            "decisions": [_readable(r) for r in state.engine.audit(args.message_id)],
            "deliveries": state.deliveries(args.message_id),
            "requeues": state.requeues(args.message_id),
        }
        if state.archive is not None:
            out["rows"] = rows
        print(json.dumps(out, indent=2, default=str))
        return 0
    finally:
        state.close()


def _readable(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if isinstance(out.get("ch"), int):
        out["ch"] = _eui(out["ch"])
    if isinstance(out.get("esmes"), list):
        out["esmes"] = [_eui(e) for e in out["esmes"]]
    ev = out.get("evidence")
    if isinstance(ev, list):
        out["evidence"] = [
            {**e, "device": _eui(e.get("device"))}
            if isinstance(e, dict) and e.get("device") is not None
            else e
            for e in ev
        ]
    return out


# ------------------------------------------------------------------------------------------ release


def _release(args: argparse.Namespace) -> int:
    from gateway.service.api import ServiceError

    who = _who_and_why(args)
    if isinstance(who, int):
        return who
    operator, note = who
    state = _open(args, writable=True)
    if isinstance(state, int):
        return state
    try:
        status = state.engine.status(args.message_id)
        if status is None:
            return _fail(f"unknown message {args.message_id!r} (an archived message cannot be released)", 1)
        if status != "suppress":
            return _fail(_not_suppressed(state, args.message_id, status), 1)
        taken = _taken_in_signed(state, args.message_id)
        if isinstance(taken, int):
            return taken
        if taken is not None:
            return _fail(taken, 1)
        if state.is_shared:
            elsewhere_taken = _taken_in_signed_elsewhere(state, args.message_id)
            if elsewhere_taken is not None:
                return elsewhere_taken
        names = [d.name for d in state.config.destinations]
        route = state.route(args.message_id)
        dest = route[0] if route else (names[0] if len(names) == 1 else None)
        if dest is None or dest not in names:
            return _fail(f"no configured destination known for {args.message_id!r} (route {route!r})")
        raw = _record_release(state, args.message_id, operator, note)
        if isinstance(raw, int):
            return raw
        if raw is None:
            return _fail("the original bytes of this message were not kept", 1)
        released = [_Released(args.message_id, dest, route[1] if route else "", raw)]
        if not args.without_restoration:
            released.extend(_release_paired(state, args.message_id, dest, names, operator, note))
        # shared state: the restorations other instances paired with this life are named after the outbox rows are
        # written (reading the shared index's days of this life takes seconds on a busy store: the DNO's AD1 does
        # not wait for it)
        elsewhere = state.is_shared and not args.without_restoration
        deliveries = [(r.message_id, r.destination, r.body, {
            "message_id": r.message_id, "decision": "forward", "action": "release-forward",
            "reason": "operator-release", "kind": r.kind, "operator": operator}) for r in released]  # fmt: skip
        try:
            added = asyncio.run(_enqueue(state, deliveries))
            state.writer.mark_delivered([r.message_id for r in released])
        except (sqlite3.Error, ServiceError) as exc:
            # the releases are recorded (committed above) as undelivered forwards: the gateway's
            # redelivery scan puts them in the outbox (idempotent on queue and message id), in this order
            for r in released:
                print(f"released {r.message_id} to {r.destination}{_after(r, released)} by {operator} (recorded); "
                      f"its outbox row was not written here ({exc}): the gateway writes it at its next "
                      "redelivery scan (every 5 s, or when it starts)")  # fmt: skip
            if elsewhere:
                _paired_elsewhere(state, args.message_id, _life(state, args.message_id))
            return 0
        for r, n in zip(released, added, strict=True):
            rows = f"({n} outbox row(s))"
            print(f"released {r.message_id} to {r.destination} {rows}{_after(r, released)} by {operator}")
        if elsewhere:
            _paired_elsewhere(state, args.message_id, _life(state, args.message_id))
        return 0
    finally:
        state.close()


@dataclass(frozen=True)
class _Released:
    """A release recorded by ``audit release``, for its outbox rows."""

    message_id: str
    destination: str
    kind: str
    body: bytes


def _after(r: _Released, released: list[_Released]) -> str:
    """For the output: the clause naming the AD1 a paired restoration follows (each line still ends with
    ``by OPERATOR``, as a single release's)."""
    outage = released[0]
    return "" if r is outage else f", the restoration paired with {outage.message_id}, queued after it,"


def _record_release(state: _State, message_id: str, operator: str, note: str) -> bytes | int | None:
    """Record the release of the suppressed ``message_id`` (shared state: take its shared release marker
    first, confirm it after): its original bytes (None: not kept), or an exit code (reported on stderr)
    when nothing was recorded."""
    from gateway.engine.errors import StoreError
    from gateway.store.archive import ArchiveUnreadable

    at = datetime.now(UTC)
    latest = state.engine.latest_decision(message_id)
    if latest is not None and latest.get("action") not in _SUPPRESSIONS:
        # its stored status says suppressed, its latest life was not: on shared state a message id re-delivered
        # after its retention and decided afresh (e.g. forwarded) may keep its earlier life's status here
        return _fail(f"message {message_id!r}: its latest decision is {_shown(str(latest.get('action')))} "
                     f"({_shown(str(latest.get('reason')))}), not a suppression; not released", 1)  # fmt: skip
    claim: _Claim | None = None
    if state.is_shared:  # exactly once across instances: the shared marker first, then the local record
        got = _claim(state, message_id, operator, note, at)
        if isinstance(got, int):
            return got
        claim = got
    try:
        # shared state: the release names its instance, as the shared decision log's entry does
        provenance = None if claim is None else {"decided_by": claim.instance}
        raw = state.writer.release_suppressed(message_id, operator, note, at, provenance)
    except (StoreError, sqlite3.Error) as exc:
        # nothing recorded here (rolled back): give the shared marker back for a later release
        withdrawn = "" if claim is None else _withdraw(state, claim)
        if isinstance(exc, ArchiveUnreadable):  # (after the CLI's own read of it: as unreadable there, exit 2)
            return _fail(f"{exc}; nothing released (put the file back where the live store names it){withdrawn}")
        if isinstance(exc, StoreError):
            # e.g. another operator's release of it committed first (after this one's check): name it
            status = state.engine.status(message_id)
            said = str(exc) if status in (None, "suppress") else _not_suppressed(state, message_id, status)
            return _fail(f"{said}{withdrawn}", 1)
        # e.g. the gateway held the lock past [store] busy_timeout
        return _fail(f"{state.engine.path}: {exc}; nothing released{withdrawn}")
    if claim is not None:
        _confirm(state, claim)
    return raw


def _taken_in_signed(state: _State, message_id: str) -> str | int | None:
    """Why the inline message quarantined under its unsigned id ``message_id`` (``<identity>#unverified:<digest>``:
    its own signature failed, ``quarantine_unverified_inline``) is not released, when the same bytes were taken in
    since under their verified id (the DCC delivered them again and their signature verified: decided afresh,
    docs/ENGINE.md §8): forwarded, the DNO has them (released, it would get them a second time under another
    ``X-DUISGW-Message-Id``); suppressed, that is the message to release (its kept outage is released and the
    restorations paired with it follow it; the quarantined copy's release would leave both); held or not decided
    yet, it is decided under that id. None: no such copy here (other bytes naming the identity are another
    message).

    A copy ``duisgw audit archive`` moved since (the live store names its archive files) is looked for there too:
    forwarded there, the DNO has the bytes (refused, naming the file and row); suppressed there (its life over, past
    its retention: no release of it can be made any more), the quarantined copy is the one way to forward the
    bytes, once: released, and said on stderr. An archive file that cannot be read: exit 2 (returned), nothing
    released; the live store names its files by absolute path (``meta.archive_files``), so after the store and its
    archives moved (another path or host) a symbolic link at the old path to the file lets the release look into it.
    There is no way past a file that is gone for good: the release cannot know the DNO did not get the bytes."""
    from gateway.engine.events import UNSIGNED_MARK
    from gateway.store.archive import ArchiveUnreadable, archived_copies

    identity, mark, _digest = message_id.rpartition(UNSIGNED_MARK)
    if not mark:
        return None
    raw = state.engine.original_bytes(message_id)
    if raw is None:
        return None
    status = state.engine.status(identity)
    if status is None or state.engine.original_bytes(identity) != raw:
        try:
            copies = archived_copies(state.engine.archive_files(), identity, bytes(raw))
        except ArchiveUnreadable as exc:
            return _fail(f"message {message_id!r} (quarantined: its signature did not verify): whether the same "
                         f"bytes were taken in since under their verified id is not known: {exc}; not released "
                         "(put the file back where the live store names it, or a symbolic link there to where it "
                         "is now: a store moved to another path or host with its archives)")  # fmt: skip
        forwarded = [c for c in copies if c.status == "forward"]
        if forwarded:
            return (f"message {message_id!r} (quarantined: its signature did not verify): the same bytes were taken in "
                    f"since under their verified id {_shown(identity)!r}, moved since to the archive: "
                    f"{_shown(str(forwarded[0]))}: the DNO has them; not released")  # fmt: skip
        for c in copies:
            print(f"duisgw audit: the same bytes were suppressed under their verified id {_shown(identity)!r}, "
                  f"{_shown(str(c))} (its life over: it cannot be released); the DNO never got them",
                  file=sys.stderr)  # fmt: skip
        return None
    why = {
        "forward": "the DNO has them",
        "suppress": f"release that one instead (duisgw audit release {_shown(identity)})",
        "hold": "they are held under it, to be decided within the hold limit",
    }.get(status, "they are decided under it")
    return (f"message {message_id!r} (quarantined: its signature did not verify): the same bytes were taken in since "
            f"under their verified id {_shown(identity)!r}, which is {status}: {why}; not released")  # fmt: skip


def _taken_in_signed_elsewhere(state: _State, message_id: str) -> int | None:
    """:func:`_taken_in_signed` on shared state, for the same bytes taken in under their verified id by ANY instance
    (this store has them only if this instance decided or recorded them): the shared idempotency key of the verified
    id (``seen:<identity>``), kept with the digest the quarantined id is marked with, names its decision and the
    instance that took it. Exit 1 then (forwarded: the DNO has the bytes, a release would send them a second time;
    suppressed: release that one, on the instance that holds its bytes; held: decided under it), 2 when the shared
    state cannot be read (nothing released); None: no such key."""
    import redis

    from gateway.engine.events import UNSIGNED_MARK

    identity, mark, digest = message_id.rpartition(UNSIGNED_MARK)
    if not mark:
        return None
    try:
        key = state.shared().idempotency_key(identity)
    except SharedStateError as exc:
        return _fail(f"{exc}; nothing released")
    except redis.RedisError as exc:
        return _fail(f"shared state at {_redis_shown(state)}: {exc}; nothing released")
    if key is None:
        return None
    kept = key.get("digest")
    try:  # the same bytes (other bytes naming the identity: another message)
        same = isinstance(kept, int) and kept == int(digest, 16)
    except ValueError:
        same = False
    decision = key.get("decision")
    if not same or not isinstance(decision, dict):
        return None
    status = {"release-forward": "forward", "release-suppress": "suppress"}.get(
        str(decision.get("action")), str(decision.get("action"))
    )
    why = {
        "forward": "the DNO has them",
        "suppress": f"release that one instead (duisgw audit release {_shown(identity)}, on the instance that holds "
        "its bytes)",
        "hold": "they are held under it, to be decided within the hold limit",
    }.get(status, "they are decided under it")
    return _fail(f"message {message_id!r} (quarantined: its signature did not verify): the same bytes were taken in "
                 f"since under their verified id {_shown(identity)!r} by instance {_shown(str(key.get('by') or '?'))}, "
                 f"which is {_shown(status)}: {why}; not released", 1)  # fmt: skip


def _not_suppressed(state: _State, message_id: str, status: str) -> str:
    """Why ``message_id`` (``status``, not ``suppress``) is not released: the operator release that forwarded
    it (who, when, why: two operators may release it at once, exactly one forwards it), or its status."""
    latest = (state.engine.audit(message_id) or [{}])[-1]
    if latest.get("action") == "release-forward" and latest.get("reason") == "operator-release":
        return (f"message {message_id!r} is {status}, not suppressed: already released by "
                f"{_shown(str(latest.get('operator', '?')))} at "
                f"{_shown(str(latest.get('decided_at', '?')))} (note: {_shown(str(latest.get('note', '')))}); not "
                "released again")  # fmt: skip
    return f"message {message_id!r} is {status}, not suppressed"


def _release_paired(
    state: _State, outage_id: str, outage_dest: str, names: list[str], operator: str, note: str
) -> list[_Released]:
    """After the release of the AD1 ``outage_id``: release the restoration alerts suppressed as paired
    with it (``restoration-paired``, evidence: that AD1), each recorded as its own release by
    ``operator`` with a note saying it follows the AD1's, exactly once as any release. A DNO that gets the
    outage must get its end. One that cannot be released is said on stderr and left (the AD1's release
    stands)."""
    out: list[_Released] = []
    follows = f"follows the release of {outage_id}: {note}"
    outage = state.engine.life_suppression(outage_id)
    life = None if outage is None else _decided_at(outage)
    # by time alone, a pairing decided at the very instant of this life's suppression was taken as this life's. Shared
    # state: the pairings the shared pairing index names with ANOTHER life of the AD1 are not. One store alone: one
    # decided at that instant is this life's only when recorded after the life's suppression (its record replaced
    # the earlier life's then; the store records a node's decisions in the order they were taken, which a store on
    # shared state, recording other instances' decisions when their re-deliveries reach it, does not)
    other_lives = _other_lives(state, outage_id, life)
    outage_seq = None if state.is_shared or outage is None else outage.get("seq")
    for mid in state.engine.paired_restorations(outage_id):
        row = state.engine.life_suppression(mid)
        if not _paired_with_life(row, outage_id, life) or (mid, _decided_at(row or {})) in other_lives:
            continue  # paired with an earlier life of the AD1 (one the DNO never got), or in an earlier life of its own
        if _before_at_instant(row or {}, life, outage_seq):
            continue  # paired with the earlier life at the instant this one was suppressed, before it
        route = state.route(mid)
        dest = route[0] if route and route[0] in names else outage_dest
        raw = _record_release(state, mid, operator, follows)
        if isinstance(raw, int):
            print(f"duisgw audit: the restoration {mid} paired with {outage_id} was not released with it "
                  f"(above); release it on its own if the DNO should see the outage end", file=sys.stderr)  # fmt: skip
            continue
        if raw is None:
            _fail(f"the restoration {mid} paired with {outage_id} is released (recorded) but its original bytes "
                  "were not kept", 0)  # fmt: skip
            continue
        out.append(_Released(mid, dest, route[1] if route else "", raw))
    return out


def _before_at_instant(row: dict[str, Any], life: datetime | None, outage_seq: object) -> bool:
    """Whether the restoration's suppression ``row`` (an :meth:`audit` row of this store) was decided at the very
    instant ``life`` of the AD1 life's suppression and recorded before it (``outage_seq``, that suppression's
    sequence in the decision log; None: not compared): then it was paired with an earlier life."""
    seq = row.get("seq")
    if life is None or not isinstance(outage_seq, int) or not isinstance(seq, int):
        return False
    return _decided_at(row) == life and seq < outage_seq


def _paired_with_life(row: dict[str, Any] | None, outage_id: str, life: datetime | None) -> bool:
    """Whether ``row``, a restoration's suppression (the shared index's, or this store's decision), paired it with
    the life of the AD1 ``outage_id`` whose suppression was decided at ``life`` (its current life, the one
    released). A pairing needs the AD1's suppressed-outage record, which a new life of the message id replaces and
    the engine's retention prunes, and the gateway clock (``decided_at``) never goes back: a restoration paired
    with this life was decided at or after its suppression, one decided before it was paired with an earlier life.
    The index's evidence names the message only; a decision's names its role, ``suppressed-outage``. A time that is
    unknown (a row without one) is taken as this life's: named, never missed."""
    if row is None or row.get("reason") != "restoration-paired":
        return False
    evidence = [e for e in row.get("evidence") or [] if isinstance(e, dict)]
    if not any(e.get("message_id") == outage_id and e.get("role", "suppressed-outage") == "suppressed-outage"
               for e in evidence):  # fmt: skip
        return False
    at = _decided_at(row)
    return life is None or at is None or at >= life


def _retention(state: _State) -> timedelta:
    """The engine's retention (``[engine] retention``): how long a suppressed AD1's record is kept for pairing."""
    from gateway.engine.config import EngineConfig
    from gateway.engine.errors import EngineConfigError

    try:
        return EngineConfig.from_mapping(state.config.engine).keep_for
    except EngineConfigError:  # (`serve` refuses such a configuration): the default retention
        return EngineConfig().keep_for


def _pairing_days(state: _State, life: datetime) -> list[date]:
    """The UTC days of the shared suppression index on which a restoration can have been paired with the AD1 life
    suppressed at ``life``: from that day until the engine's retention (``[engine] retention``) prunes the life's
    suppressed-outage record, which every pairing needs (a restoration can come long after its outage: the
    interruption is what falls in the AD1's window, not its arrival)."""
    keep = _retention(state)
    first, last = life.astimezone(UTC).date(), (life + keep).astimezone(UTC).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _other_lives(state: _State, outage_id: str, life: datetime | None) -> set[tuple[str, datetime | None]]:
    """Shared state: ``(restoration id, time of its suppression)`` of each pairing the shared pairing index names with
    another life of ``outage_id`` than the one suppressed at ``life`` (empty: not shared, no life, or the index cannot
    be read: the pairings are then taken by time, :func:`_paired_with_life`, as before the index)."""
    import redis

    if not state.is_shared or life is None:
        return set()
    try:
        return {(p.message_id, p.decided_at) for p in state.shared().pairings(outage_id)
                if p.life is not None and p.life != life}  # fmt: skip
    except (SharedStateError, redis.RedisError):
        return set()


def _life_pairings(state: _State, outage_id: str, life: datetime) -> list[tuple[str, str, datetime | None]]:
    """``(restoration id, instance that decided it, time of its suppression)`` of each restoration suppressed as
    paired with the life of ``outage_id`` suppressed at ``life``, on any instance: from the AD1's shared pairing index
    (the life each was paired with, written by its commit). A life suppressed before the index began
    (``paired-index-since``; none: not begun), or within the engine's retention after it (instances of an earlier
    version may still be pairing during a rolling upgrade, without indexing), is also searched in the shared
    suppression index of its days (:func:`_pairing_days`, seconds a day on a busy store), by time
    (:func:`_paired_with_life`), less the pairings the pairing index names with another life."""
    shared = state.shared()
    since = shared.paired_index_since()
    every = shared.pairings(outage_id)
    found: list[tuple[str, str, datetime | None]] = [
        (p.message_id, p.by, p.decided_at) for p in every if p.life is None or p.life == life
    ]
    if since is not None and life >= since + _retention(state):
        return found
    other = {(p.message_id, p.decided_at) for p in every if p.life is not None and p.life != life}
    seen = {(mid, at) for mid, _by, at in found}
    for d in _pairing_days(state, life):
        for row, _dest, _kind in shared.suppressions(d):
            if not _paired_with_life(row, outage_id, life):
                continue
            mid, at = str(row.get("message_id", "")), _decided_at(row)
            if (mid, at) not in other and (mid, at) not in seen:
                seen.add((mid, at))
                found.append((mid, str(row.get("by") or "?"), at))
    return found


def _paired_elsewhere(state: _State, outage_id: str, life: datetime | None) -> None:
    """Shared state: say (stderr) which restorations paired with the life of ``outage_id`` suppressed at ``life``
    (its current life, the one released) another instance recorded and this one did not: their original bytes are
    in that instance's store only, so they are released with its configuration. Found in the AD1's shared pairing
    index, by the life each was paired with (a life before that index: also in the shared suppression index of its
    days, by time, :func:`_life_pairings`: one paired with an earlier life of the message id is not this life's, and
    the DNO never got that outage); unreadable index: said, nothing else done."""
    import redis

    if life is None:
        return
    try:
        shared = state.shared()
        found = _life_pairings(state, outage_id, life)
        elsewhere = [(mid, by, at) for mid, by, at in found if not _holds_life(state, mid, at)]
        released = shared.releases([(mid, at) for mid, _by, at in elsewhere])
    except (SharedStateError, redis.RedisError) as exc:
        _fail(f"restorations paired with {outage_id} on other instances not looked for ({exc})", 0)
        return
    for (mid, by, _at), release in zip(elsewhere, released, strict=True):
        if release is None:
            _fail(f"the restoration {mid} paired with {outage_id} was recorded by instance {_shown(by)}, not "
                  "here: release it with that instance's configuration (its bytes are in its store)", 0)  # fmt: skip


def _holds_life(state: _State, message_id: str, at: datetime | None) -> bool:
    """Whether this store holds the life of ``message_id`` suppressed at ``at`` (decided here, or another instance's
    decision recorded here for a re-delivery, with its time): then its bytes are here, and :func:`_release_paired`
    released it or it is not suppressed here any more. Another life of the message id (re-delivered after the
    engine's retention) is not that one: its bytes may be the same, its release is another life's. ``at`` unknown:
    whether the message id is known here at all."""
    if at is None:
        return state.engine.status(message_id) is not None
    return any(r.get("action") in _SUPPRESSIONS and _decided_at(r) == at for r in state.engine.audit(message_id))


@dataclass(frozen=True)
class _Claim:
    message_id: str
    marker: str  # the marker's JSON text, as taken in Redis: this release's (operator, note, time, instance)
    instance: str
    #: the life released: the time of its suppression decision (None: none found, the marker by message id)
    life: datetime | None = None


#: the decisions that suppress a message
_SUPPRESSIONS = ("suppress", "release-suppress")


def _life(state: _State, message_id: str) -> datetime | None:
    """The time of the suppression decision of the current life of ``message_id`` in this store (its
    ``suppress``, or the ``release-suppress`` that ended its hold), as every instance records it (an instance
    records another's decision with its time): what names the life in the shared release markers. A message id
    re-delivered after the engine's retention and suppressed afresh is a new life, released on its own (the
    rule of lives: ``gateway.store.sqlite._LIFE``, read through :meth:`DecisionReads.life_suppression`)."""
    first = state.engine.life_suppression(message_id)
    return None if first is None else _decided_at(first)


def _release_identity(state: _State) -> tuple[str, str, str]:
    """``(instance, host, store)`` naming where a release is recorded: the configured instance name (or the
    host), the host and this instance's decision store (a release resumed from the same store and host may
    take its own marker again)."""
    import socket

    host = socket.gethostname()
    return state.config.state.instance or host, host, str(state.engine.path.resolve())


def _claim(state: _State, message_id: str, operator: str, note: str, at: datetime) -> _Claim | int:
    """Take the shared release marker of ``message_id`` (exit 1 when another release took it, 2 when the
    shared state cannot be reached). A marker this very store took before, left by a release that then
    recorded nothing here (the message is still suppressed here), is taken again."""
    import redis

    instance, host, store = _release_identity(state)
    life = _life(state, message_id)
    fields = {"message_id": message_id, "action": "release-forward", "reason": "operator-release",
              "operator": operator, "note": note, "decided_at": at.isoformat(), "instance": instance,
              "host": host, "store": store}  # fmt: skip
    if life is not None:  # the life released (markers written before lives were kept have none)
        fields["life"] = life.isoformat()
    marker = json.dumps(fields, separators=(",", ":"))
    try:
        shared = state.shared()
        found = shared.claim(message_id, marker, life)
        if found is None:
            return _Claim(message_id, marker, instance, life)
        other = _parsed(found)
        if other.get("host") == host and other.get("store") == store:
            # left by an attempt of this very store that recorded nothing (the message is still suppressed here):
            # taken again and rewritten, so that the marker names this release (who, when, why) from now on
            if shared.retake_release(message_id, found, marker, life):
                print(f"taking again the release marker this instance took at "
                      f"{_shown(str(other.get('decided_at')))} (that release recorded nothing here)",
                      file=sys.stderr)  # fmt: skip
                return _Claim(message_id, marker, instance, life)
            return _fail(f"message {message_id!r}: its release marker changed while this release took it again "
                         "(another release?); nothing released", 1)  # fmt: skip
    except SharedStateError as exc:
        return _fail(f"{exc}; nothing released")
    except redis.RedisError as exc:
        return _fail(f"shared state at {_redis_shown(state)}: {exc}; nothing released")
    return _fail(
        f"message {message_id!r} was already released by {_shown(str(other.get('operator', '?')))} on instance "
        f"{_shown(str(other.get('instance', '?')))} at {_shown(str(other.get('decided_at', '?')))} "
        f"(note: {_shown(str(other.get('note', '')))}); not released again",
        1,
    )


def _parsed(text: str) -> dict[str, Any]:
    """A release marker's JSON text as a mapping (one that is not JSON: ``{"raw": text}``)."""
    try:
        data = json.loads(text)
    except ValueError:
        return {"raw": text}
    return data if isinstance(data, dict) else {"raw": text}


def _redis_shown(state: _State) -> str:
    from gateway.store.redis_state import redacted_url

    return redacted_url(state.config.state.redis_url)


def _withdraw(state: _State, claim: _Claim) -> str:
    """Give the marker back; a clause for the failure message."""
    import redis

    try:
        state.shared().withdraw_release(claim.message_id, claim.marker, claim.life)
    except redis.RedisError as exc:
        return (f"; the shared release marker could not be given back ({exc}): a release from this "
                "configuration takes it again, one from another instance is refused")  # fmt: skip
    return ""


def _confirm(state: _State, claim: _Claim) -> None:
    """Append the recorded release to the shared decision log (a failure leaves the release standing)."""
    import redis

    try:
        state.shared().confirm_release(claim.message_id, claim.marker, claim.instance, life=claim.life)
    except redis.RedisError as exc:
        _fail(f"the release is recorded, not in the shared decision log ({exc})", 0)


async def _enqueue(state: _State, deliveries: list[tuple[str, str, bytes, dict[str, str]]]) -> list[int]:
    """Put ``(message id, destination, bytes, metadata)`` in the outbox, in this order (a queue delivers in
    order: a paired restoration after its AD1), in ONE transaction; the rows added for each."""
    from gateway.service.api import Delivery
    from gateway.service.app import queues_for
    from gateway.service.outbox import Outbox, SqliteStore

    cfg = state.config
    store = SqliteStore(
        cfg.store.path, synchronous=cfg.store.synchronous, busy_timeout=cfg.store.busy_timeout
    )
    await store.open()
    try:
        outbox = Outbox(store, lambda d: queues_for(cfg, d))
        items = [Delivery(mid, dest, body, meta) for mid, dest, body, meta in deliveries]
        return await store.write(lambda conn: [outbox.enqueue_in(conn, [d]) for d in items])
    finally:
        await store.close()


# ------------------------------------------------------------------------------------------ archive


def _archive(args: argparse.Namespace) -> int:
    from gateway.engine.config import EngineConfig
    from gateway.engine.errors import EngineConfigError
    from gateway.errors import DuisgwError
    from gateway.service.config import ConfigError
    from gateway.service.serve import engine_db_path, load_state_config
    from gateway.store.archive import ArchiveRefused, archive_settled

    if args.chunk < 1:
        return _fail(f"--chunk: must be 1 or more, got {args.chunk}")
    try:
        before = _parse_time(args.before)
    except ValueError:
        return _fail(f"--before: not an ISO-8601 date or time: {args.before!r}")
    try:
        cfg, _base = load_state_config(args.config)
        if cfg.state.backend == "redis":
            return _fail(
                'archive: the decision state is shared ([state] backend = "redis"); only SQLite state'
            )
        keep_for = EngineConfig.from_mapping(cfg.engine).keep_for
        decision_db = engine_db_path(cfg)
        transport_db = None if decision_db == Path(cfg.store.path) else Path(cfg.store.path)
        report = archive_settled(
            decision_db, args.to, before=before, keep_for=keep_for, transport_db=transport_db, chunk=args.chunk,
            busy_timeout=float(cfg.store.busy_timeout),
        )  # fmt: skip
    except ConfigError as exc:
        return _fail("; ".join(exc.problems))
    except EngineConfigError as exc:
        return _fail(f"[engine]: {exc}")
    except ArchiveRefused as exc:
        moved = exc.moved.messages
        return _fail(f"{exc}; " + (f"{moved} message(s) moved before it" if moved else "nothing moved"))
    except (DuisgwError, OSError, sqlite3.Error) as exc:
        return _fail(str(exc))
    print(
        f"archived {report.messages} message(s), {report.decisions} decision(s), {report.releases} operator "
        f"release(s), {report.routes} route(s) to {args.to} in {report.transactions} transaction(s); "
        f"{report.unsettled} message(s) from before {before.isoformat()} left (held, undecided, queued for "
        "delivery, decided since, or the store's newest)"
    )
    if report.finished or report.withdrawn:
        print(
            f"of a run cut between its two commits: {report.finished} message(s) deleted from the live store "
            f"(counted above), {report.withdrawn} changed since taken back out of the archive (the live store's "
            "rows stand)"
        )
    return 0 if report.messages else 1


# ------------------------------------------------------------------------------------------ export


@dataclass(frozen=True)
class ExportDay:
    """The day an export lists: ``day`` in UTC, or the civil day ``day`` of the IANA time zone ``zone``
    (``Europe/London``: 23 hours on the day the clocks go forward, 25 on the day they go back)."""

    day: date
    zone: str | None = None

    @classmethod
    def of(cls, day: date, zone: str | None) -> ExportDay:
        """``day`` in ``zone`` (None, ``UTC``: the UTC day); ValueError naming a zone that is not known."""
        if zone is None or zone == "UTC":
            return cls(day)
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"not a known IANA time zone: {zone!r} (e.g. Europe/London)") from None
        return cls(day, zone)

    def bounds(self) -> tuple[datetime, datetime]:
        """``[start, end)``: the day's first instant and the next day's, in UTC."""
        from zoneinfo import ZoneInfo

        tz = UTC if self.zone is None else ZoneInfo(self.zone)
        start = datetime.combine(self.day, time(0), tzinfo=tz)
        end = datetime.combine(self.day + timedelta(days=1), time(0), tzinfo=tz)
        return start.astimezone(UTC), end.astimezone(UTC)

    def contains(self, at: datetime) -> bool:
        start, end = self.bounds()
        return start <= at < end

    def utc_days(self) -> list[date]:
        """The UTC days the day overlaps (one for a UTC day, two for a local day off UTC)."""
        start, end = self.bounds()
        last = (end - timedelta(microseconds=1)).date()
        return [start.date() + timedelta(days=i) for i in range((last - start.date()).days + 1)]

    def label(self) -> str:
        """The day in file names: ``2026-03-29``, or ``2026-03-29-Europe_London`` for a local day."""
        text = self.day.isoformat()
        return text if self.zone is None else f"{text}-{self.zone.replace('/', '_')}"


def suppression_rows(
    state: _State, day: date | ExportDay, destination: str | None, *, local: bool = False
) -> Iterator[dict[str, str]]:
    """The CSV rows of the day's suppressions, one per suppression (``suppress``, or ``release-suppress``
    ending a hold: one per life of a message, :meth:`SqliteStore.first_suppressions`) decided on ``day``
    (its ``decided_at``): a UTC day, or with :class:`ExportDay` a zone's civil day; ``status`` is what that
    life of the message is now (``released`` after an operator release of it).

    Single node (and ``local``): read from this instance's decision log as a stream (memory does not grow
    with it), in decision order; ``local`` on shared state leaves out the decisions another instance took
    that this one only recorded (``recorded_as = "duplicate"``). Shared state: read from the shared
    suppression index (:meth:`SharedAudit.suppressions`): every instance's, each once, in decision time
    order (one day's rows in memory), ``released`` from the confirmed shared release of the row's life."""
    span = day if isinstance(day, ExportDay) else ExportDay(day)
    if state.is_shared and not local:
        yield from _shared_rows(state, span, destination)
        return
    # decided_at texts carry their offset: a day wider each side finds every one in the span
    start, end = span.bounds()
    low, high = (start.date() - timedelta(days=1)).isoformat(), (end.date() + timedelta(days=2)).isoformat()
    for first, latest in state.engine.suppression_lives(low, high):
        at = _decided_at(first)
        if at is None or not span.contains(at):
            continue
        if first.get("recorded_as") == "duplicate":
            continue  # another instance's decision, recorded here for a re-delivery: in its export
        mid = str(first["message_id"])
        dest, kind = state.route(mid) or ("", "")
        if destination and dest != destination:
            continue
        # released: the life's latest decision is a forward (its operator release: who, when, why)
        release = latest if _DISPOSITION.get(str(latest.get("action"))) == "forward" else None
        yield _export_row(span.day, first, dest, kind, release)


def _shared_rows(state: _State, span: ExportDay, destination: str | None) -> Iterator[dict[str, str]]:
    """The shared suppression index's rows of ``span``: its UTC day's hash, or (a local day) those of the
    two UTC days it overlaps, keeping the suppressions decided within it; each life of a message once (a message
    id re-delivered after its retention and suppressed afresh on the same day has a row per life, as ``--local``:
    a life is its message id and the time of its suppression, what names its release)."""
    shared = state.shared()
    found: dict[tuple[str, datetime], tuple[dict[str, Any], str, str]] = {}
    for utc_day in span.utc_days():
        for row, dest, kind in shared.suppressions(utc_day):
            if destination and dest != destination:
                continue
            mid = str(row.get("message_id", ""))
            at = _decided_at(row)
            if span.zone is not None and (at is None or not span.contains(at)):
                continue  # the index is by UTC day: the other hours of that UTC day are not in this one
            found.setdefault((mid, at or datetime.min.replace(tzinfo=UTC)), (row, dest, kind))
    ordered = sorted(found.items(), key=lambda f: (f[0][1], f[0][0]))
    # each row is a life's suppression: its release is the one made on that life (named by its decided_at)
    released = shared.releases([(mid, _decided_at(row)) for (mid, _at), (row, _d, _k) in ordered])
    for (_key, (row, dest, kind)), release in zip(ordered, released, strict=True):
        yield _export_row(span.day, row, dest, kind, release)


#: the first characters with which a spreadsheet (Excel, LibreOffice, Google Sheets) reads a cell as a formula
#: (or, tab and carriage return, strips them and reads what follows): OWASP's CSV injection list
_FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    """``text`` for an export cell: one that a spreadsheet would run as a formula (``=HYPERLINK(...)``,
    ``@SUM(...)``, ``+``, ``-``: from message content, e.g. an identity or an MPAN) with a leading ``'``, which
    a spreadsheet shows as text; every other one unchanged (no field the gateway writes itself begins so)."""
    return "'" + text if text.startswith(_FORMULA_LEADS) else text


def _export_row(
    day: date, first: dict[str, Any], dest: str, kind: str, release: dict[str, Any] | None
) -> dict[str, str]:
    row = _export_fields(day, first, dest, kind, release)
    return {column: _cell(value) for column, value in row.items()}


def _export_fields(
    day: date, first: dict[str, Any], dest: str, kind: str, release: dict[str, Any] | None
) -> dict[str, str]:
    """The cells of the suppression ``first``; ``release``: None while it is suppressed, else the release
    that forwarded it (the decision record of an operator release, or the shared state's confirmed release
    marker: ``operator``, ``note``, ``decided_at``; a field it lacks is left empty)."""
    evidence = first.get("evidence") or []
    return {
        "date": day.isoformat(),
        "destination": dest,
        "message_id": str(first["message_id"]),
        "kind": kind or str(first.get("event_kind", "")),
        "ch": _eui(first.get("ch")),
        "mpan": str(first.get("mpan") or ""),
        "esme": ";".join(_eui(e) for e in first.get("esmes") or []),
        "start_datetime": str(first.get("event_time") or ""),
        "reason": str(first.get("reason", "")),
        "evidence_message_ids": ";".join(
            str(e.get("message_id")) for e in evidence if isinstance(e, dict) and e.get("message_id")
        ),
        "status": "suppressed" if release is None else "released",
        "decided_at": str(first.get("decided_at") or ""),
        "released_at": "" if release is None else str(release.get("decided_at") or ""),
        "released_by": "" if release is None else str(release.get("operator") or ""),
        "release_note": "" if release is None else str(release.get("note") or ""),
    }


def _shared_index_problem(state: _State, day: date) -> str | None:
    """Why the shared suppression index cannot give ``day`` (None: it can)."""
    days = state.config.state.export_days
    if days <= 0:
        return "[state] export_days = 0: no shared suppression index is kept; --local exports this instance's own"
    clock = state.shared().clock()
    if clock is not None and day < clock.astimezone(UTC).date() - timedelta(days=days):
        return (f"{day.isoformat()} is past the shared suppression index's {days} days ([state] export_days; "
                f"the gateway clock is at {clock.isoformat()}); --local exports this instance's own")  # fmt: skip
    return None


class _LineFeedRows:
    """Rows a :mod:`csv` writer ends with ``\\r\\n``, written ending with ``\\n`` (the export's lines). The
    writer quotes a field holding any character of its line terminator: with ``\\n`` alone, a field holding a
    bare carriage return was written unquoted, and a spreadsheet or CSV reader split the row there."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def write(self, text: str) -> int:
        if text.endswith("\r\n"):
            text = text[:-2] + "\n"
        return self._out.write(text)


def _csv_writer(out: IO[str], span: ExportDay) -> csv.DictWriter[str]:
    """A CSV writer that wrote the header: ``EXPORT_COLUMNS``, their first (``date``) named after the
    zone of a local-day export (``date_Europe/London``), so that a file says which day it lists. Lines end
    with ``\\n``; a field holding a comma, a quote, ``\\n`` or ``\\r`` is quoted (RFC 4180)."""
    w = csv.DictWriter(_LineFeedRows(out), fieldnames=EXPORT_COLUMNS, lineterminator="\r\n")
    if span.zone is None:
        w.writeheader()
    else:
        w.writerow({c: f"date_{span.zone}" if c == "date" else c for c in EXPORT_COLUMNS})
    return w


def _export(args: argparse.Namespace) -> int:
    import redis

    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        return _fail(f"--date: expected YYYY-MM-DD, got {args.date!r}")
    try:
        span = ExportDay.of(day, args.tz)
    except ValueError as exc:
        return _fail(f"--tz: {exc}")
    state = _open(args)
    if isinstance(state, int):
        return state
    try:
        configured = {d.name for d in state.config.destinations}
        if args.destination and args.destination not in configured | state.destinations():
            known = ", ".join(sorted(configured)) or "none"
            return _fail(
                f"--destination: {args.destination!r} is not a destination of this gateway (configured: {known})"
            )
        if state.archive is None and not state.is_shared:
            _archived_note(state.engine.path, span.bounds()[0])
        if state.is_shared and not args.local:
            problem = _shared_index_problem(state, span.utc_days()[0])
            if problem is not None:
                return _fail(problem)
            rows: Iterable[dict[str, str]] = list(suppression_rows(state, span, args.destination))
        else:
            rows = suppression_rows(state, span, args.destination, local=True)
        if args.out_dir is None:
            w = _csv_writer(sys.stdout, span)
            n = 0
            for r in rows:
                w.writerow(r)
                n += 1
            return 0 if n else 1
        named = [args.destination] if args.destination else sorted(configured)
        return _export_files(args.out_dir, span, rows, named)
    except sqlite3.Error as exc:
        return _fail(f"{state.engine.path}: {exc}")
    except SharedStateError as exc:
        return _fail(str(exc))
    except redis.RedisError as exc:
        return _fail(f"shared state at {_redis_shown(state)}: {exc}")
    finally:
        state.close()


def _archived_note(live: Path, start: datetime) -> None:
    """Say on stderr when part of a span starting at ``start`` may be in an archive (``audit archive``)."""
    from gateway.store.archive import archived_note

    with _reading(live, 5.0) as conn:
        note = archived_note(conn, start)
    if note is not None:
        print(f"duisgw audit: note: {note}", file=sys.stderr)


def _export_files(
    out_dir: Path, span: ExportDay, rows: Iterable[dict[str, str]], destinations: list[str]
) -> int:
    """One ``suppressions-DAY-DESTINATION.csv`` per destination (a local day's:
    ``suppressions-DAY-ZONE-DESTINATION.csv``, ``/`` in the zone as ``_``: ``...-2026-03-29-Europe_London-dno.csv``):
    every one named (the configured ones, or ``--destination``), with the header alone on a day without
    suppressions, so that a DNO can tell "none" from "missing"; and one per other destination the rows name
    (``unknown``: no route). Each file is written beside its final name and renamed over it once complete
    (never seen half-written)."""
    path = out_dir
    files: dict[str, tuple[Path, IO[str], csv.DictWriter[str]]] = {}
    counts: dict[str, int] = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)

        def writer(dest: str) -> csv.DictWriter[str]:
            nonlocal path
            if dest not in files:
                path = out_dir / f"suppressions-{span.label()}-{dest}.csv"
                part = path.with_name(f".{path.name}.part")
                f = part.open("w", encoding="utf-8", newline="")
                files[dest] = (path, f, _csv_writer(f, span))
                counts[dest] = 0
            return files[dest][2]

        for dest in destinations:
            writer(dest)
        for r in rows:
            dest = r["destination"] or "unknown"
            writer(dest).writerow(r)
            counts[dest] += 1
        for dest, (final, f, _w) in sorted(files.items()):
            path = final
            f.flush()
            os.fsync(f.fileno())
            f.close()
            final.with_name(f".{final.name}.part").replace(final)
            print(f"{final}: {counts[dest]} suppression(s)")
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}")
    finally:
        for final, f, _w in files.values():
            if not f.closed:
                f.close()
                final.with_name(f".{final.name}.part").unlink(missing_ok=True)
    return 0 if any(counts.values()) else 1


# ------------------------------------------------------------------------------------------ transport store


@contextmanager
def _reading(path: Path, timeout: float) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the database at ``path`` (never creates it)."""
    from gateway.store.sqlite import connect_read_only

    conn = connect_read_only(path, timeout)
    try:
        yield conn
    finally:
        conn.close()


class _Transport:
    """The transport store (``[store] path``) of one gateway configuration: outbox, rejects, re-queues.
    Needs no decision state (also a passthrough gateway's)."""

    def __init__(self, config_path: Path) -> None:
        from gateway.service.serve import load_state_config

        self.config, _base = load_state_config(config_path)
        self.path = Path(self.config.store.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no transport store at {self.path}")
        self.busy_timeout = float(self.config.store.busy_timeout)

    def reading(self) -> AbstractContextManager[sqlite3.Connection]:
        return _reading(self.path, self.busy_timeout)

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """ONE write transaction (``BEGIN IMMEDIATE``: the write lock is taken at once, waiting at most
        ``[store] busy_timeout`` behind a running gateway's own short transactions), committed on leaving
        without an exception (``synchronous = FULL``: durable on return), rolled back otherwise."""
        conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()


def _open_transport(config: Path | None) -> _Transport | int:
    from gateway.errors import DuisgwError
    from gateway.service.config import ConfigError

    if config is None:
        return _fail("the following argument is required: --config FILE")
    try:
        return _Transport(config)
    except ConfigError as exc:
        return _fail("; ".join(exc.problems))
    except (DuisgwError, OSError, sqlite3.Error) as exc:
        return _fail(str(exc))


def _no_table(exc: sqlite3.OperationalError) -> bool:
    return "no such table" in str(exc)


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------------------------------ dead letters


def _dead_item(d: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON: the keys and units of ``show``'s deliveries (times in epoch seconds)."""
    return {
        "seq": d.seq,
        "queue": d.queue,
        "message_id": d.message_id,
        "destination": d.destination,
        "state": "dead",
        "attempts": d.attempts,
        "refusals": d.refusals,
        "last_error": d.last_error,
        "enqueued_at": d.enqueued_at,
        "done_at": d.done_at,
    }


def _dead_list(args: argparse.Namespace) -> int:
    from gateway.service.outbox import dead_letters

    store = _open_transport(args.config)
    if isinstance(store, int):
        return store
    try:
        with store.reading() as conn:
            rows = dead_letters(conn, queue=args.queue)
    except sqlite3.OperationalError as exc:
        if not _no_table(exc):
            return _fail(f"{store.path}: {exc}")
        rows = []  # a store that never had an outbox
    except sqlite3.Error as exc:
        return _fail(f"{store.path}: {exc}")
    for d in rows:
        if args.json:
            print(json.dumps(_dead_item(d), separators=(",", ":")))
        else:
            error = _shown((d.last_error or "").replace("\n", " "))
            print(f"{d.seq:>8} {_shown(d.queue):<18} {d.attempts:>3} {_iso(d.enqueued_at):<29} {_iso(d.done_at):<29} "
                  f"{_shown(d.message_id)}  {error[:80]}")  # fmt: skip
    if not args.json:
        print(f"{len(rows)} dead letter(s) (seq, queue, attempts, enqueued, dead-lettered, message id, "
              "last error)", file=sys.stderr)  # fmt: skip
    return 0 if rows else 1


def _dead_requeue(args: argparse.Namespace) -> int:
    from gateway.service.outbox import dead_letters, requeue_dead_in

    if args.all == bool(args.message_ids):
        return _fail("dead requeue: name the MESSAGE_IDs to requeue, or --all (not both)")
    who = _who_and_why(args)
    if isinstance(who, int):
        return who
    operator, note = who
    store = _open_transport(args.config)
    if isinstance(store, int):
        return store
    ids = None if args.all else list(dict.fromkeys(args.message_ids))
    where = f" in queue {args.queue}" if args.queue else ""
    try:
        with store.writing() as conn:
            rows = dead_letters(conn, queue=args.queue, message_ids=ids)
            missing = sorted(set(ids or ()) - {d.message_id for d in rows})
            if missing or not rows:
                raise _NothingDone(missing)
            done = requeue_dead_in(conn, rows, operator=operator, note=note, at=datetime.now(UTC))
    except _NothingDone as nothing:
        if nothing.missing:
            return _fail(f"no dead letter{where} for {', '.join(nothing.missing)}; nothing requeued", 1)
        return _fail(f"no dead letters{where}; nothing requeued", 1)
    except sqlite3.OperationalError as exc:
        if _no_table(exc):
            return _fail(f"no dead letters{where} (no outbox in {store.path}); nothing requeued", 1)
        return _fail(f"{store.path}: {exc}; nothing requeued")
    except sqlite3.Error as exc:
        return _fail(f"{store.path}: {exc}; nothing requeued")
    for d in done:
        print(f"requeued {d.queue} seq {d.seq} {d.message_id} (was dead after {d.attempts} attempt(s))")
    poll = store.config.outbox.poll_interval
    print(f"{len(done)} dead letter(s) requeued by {operator}; a running gateway delivers them once their "
          f"queue is idle (it scans every {poll:g} s), a stopped one when it starts")  # fmt: skip
    return 0


class _NothingDone(Exception):
    """Inside the write transaction: roll it back, nothing matched."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(missing)
        self.missing = missing


# ------------------------------------------------------------------------------------------ rejects


def _reject_item(r: RejectInfo) -> dict[str, Any]:
    return {
        "id": r.id,
        "received_at": r.received_at,
        "lane": r.lane,
        "user": r.user,
        "reason": r.reason,
        "detail": r.detail,
        "size": r.size,
    }


def _rejects_list(args: argparse.Namespace) -> int:
    from gateway.service.outbox import read_rejects

    if args.limit < 0:
        return _fail(f"--limit: must be 0 (all) or more, got {args.limit}")
    try:
        since = _parse_time(args.since) if args.since else None
    except ValueError:
        return _fail(f"--since: not an ISO-8601 time: {args.since!r}")
    store = _open_transport(args.config)
    if isinstance(store, int):
        return store
    shown: list[RejectInfo] = []
    matched = 0
    try:
        with store.reading() as conn:
            for r in read_rejects(conn, reason=args.reason):  # newest first
                if since is not None:
                    try:
                        if _parse_time(r.received_at) < since:
                            continue
                    except ValueError:
                        continue
                matched += 1
                if not args.limit or len(shown) < args.limit:
                    shown.append(r)
    except sqlite3.OperationalError as exc:
        if not _no_table(exc):
            return _fail(f"{store.path}: {exc}")
    except sqlite3.Error as exc:
        return _fail(f"{store.path}: {exc}")
    for r in reversed(shown):  # oldest first, as `list`
        if args.json:
            print(json.dumps(_reject_item(r), separators=(",", ":")))
        else:
            detail = _shown((r.detail or "").replace("\n", " "))
            print(f"{r.id:>8} {_shown(r.received_at):<33} {_shown(r.lane):<8} {_shown(r.reason):<22} {r.size:>9} "
                  f"{_shown(r.user) or '-':<24} {detail[:80]}")  # fmt: skip
    if not args.json:
        more = f" (the newest {len(shown)} of {matched}: --limit 0 for all)" if len(shown) < matched else ""
        print(f"{len(shown)} reject(s){more} (id, received_at, lane, reason, size, user, detail)", file=sys.stderr)
    return 0 if shown else 1


def _rejects_show(args: argparse.Namespace) -> int:
    import hashlib

    from gateway.service.outbox import read_reject

    store = _open_transport(getattr(args, "config", None))
    if isinstance(store, int):
        return store
    if not 0 <= args.reject_id < 2**63:  # past SQLite's integers: no such row
        return _fail(f"unknown reject {args.reject_id}", 1)
    try:
        with store.reading() as conn:
            found = read_reject(conn, args.reject_id)
    except sqlite3.OperationalError as exc:
        if not _no_table(exc):
            return _fail(f"{store.path}: {exc}")
        found = None
    except sqlite3.Error as exc:
        return _fail(f"{store.path}: {exc}")
    if found is None:
        return _fail(f"unknown reject {args.reject_id}", 1)
    info, body = found
    if args.raw:
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
        return 0
    out = {
        **_reject_item(info),
        "sha256": hashlib.sha256(body).hexdigest(),
        # the first bytes, readable: undecodable bytes as \xNN (--raw for the bytes themselves)
        "preview": body[:512].decode("utf-8", "backslashreplace"),
    }
    print(json.dumps(out, indent=2, default=str))
    return 0
