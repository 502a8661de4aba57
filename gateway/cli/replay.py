"""``duisgw replay``: run recorded traffic through the classifier and engine in event time.

Contract (other tools and conformance runs depend on it)::

    duisgw replay INPUT... --guids FILE --inventory FILE --certs DIR --gbcs-keys DIR
                  [--config FILE] [--jsonl OUT] [--state DB] [--html REPORT]
    duisgw replay INPUT... --target URL [--speed N] [--user DNO] [--gateway-config FILE] [--jsonl OUT]
                                                                                  (a live gateway)
    duisgw replay CAPTURE --follow [--idle SECONDS] --guids FILE ...     (a capture being written)
    duisgw replay NAME --follow --rotated [--idle SECONDS] ...           (a rotated capture being written:
                                                      NAME is tcpdump's or dumpcap's -w; with --target too)

INPUT: a JSONL script, a directory of DUIS files, or a pcap/pcapng capture, gzipped or not (``cap.pcap``,
``cap.pcapng.gz``, a rotated capture's ``cap.pcap1`` or ``cap.pcap1.gz``, or any name, told by its content); the
captures given are read as one capture, whichever of them are gzipped. A gzipped capture is read as it is
decompressed and decided as the same file uncompressed; one whose gzip stream is cut short or damaged is read up to
there and gets a ``truncated-file`` notice saying so.

One JSON object per inline message, in the order decisions are final (a held message gets its line
when it is released, and so does each re-delivery of it that came while it was held):
``message_id, kind, decision (forward|suppress|reject), action, held, reason, evidence,
device{esme,ch,mpan}, event_time, decided_at`` (+ ``window``, ``flags``, ``verification``, ``duplicate``,
``detail`` when they apply). Requests of a capture lost to its damage (a gap) get a ``decision: "lost"`` line
each (``lane``, ``requests``, ``detail``, ``first_byte_time`` and ``bytes_seen`` when known). Several inputs are merged by arrival time. Exit 0 when the run completed,
2 on unusable arguments or files (one line on stderr; every input is checked and opened, and every file
the run writes — ``--jsonl``, ``--state``, ``--html`` — is opened, before the first message is read, so
an unusable one stops the run before it starts, not after).

``--follow``: the one capture file given is being written (``tcpdump -w``, dumpcap): it is read to the end
written so far, then as it grows, each request decided as soon as the reader gives it, the lines written out
each time the end written so far is reached; SIGINT or SIGTERM (or ``--idle`` seconds without growth) ends
it at once, as a capture's end does (what has been read is decided, the held messages get their final
decision, the summary and the report are written, exit 0). ``--rotated``: the input is the name the capture
tool was given (``tcpdump -C``/``-G``/``-W -w NAME``, ``dumpcap -b ... -w NAME``), and its files are read one
after the other as they are written; a finished file its writer compresses (``tcpdump -z gzip``: ``NAME1``
becomes ``NAME1.gz``) is read from the ``.gz`` when that is what is there by its turn, once; a file deleted or
overwritten before it was read (a ring buffer the replay fell behind; a ``.gz`` deleted before its turn) gets a
``lost`` line (``reason: "file-lost"``) and is counted in the summary. A gzipped file is not followed on its own
(``--follow`` without ``--rotated``: refused; it is a finished file, replayed without ``--follow``). With
``--target`` the requests are sent to the live gateway as they are read.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from gateway.duis.schema import load_schema
from gateway.engine.config import EngineConfig
from gateway.errors import DuisgwError
from gateway.gbcs_keys import load_keystore
from gateway.guids import import_guids
from gateway.inventory import Inventory, import_inventory_csv
from gateway.pipeline import Classifier
from gateway.replay import (
    FILE_LOST,
    ClassifierSpec,
    IngressLimits,
    InputMessage,
    InputProblem,
    ReplayRun,
    classify_in_workers,
    follow_capture,
    iter_inputs,
)
from gateway.report.html import ReportData, render_html
from gateway.smki import BadTrustEntry, CertificateStore, SigningPolicy, parse_trust_expired
from gateway.store.durable import DurableEngine
from gateway.store.sqlite import SqliteStore
from gbcs.crypto import Verifier

if TYPE_CHECKING:
    from gateway.capture.reader import Follow


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "replay",
        help="replay DUIS traffic (JSONL script, directory, pcap/pcapng, gzipped or not) through the engine",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="JSONL script, directory or capture (.pcap, .pcapng, .cap, tcpdump's cap.pcap1 ..., each optionally "
        "gzipped: .pcap.gz, cap.pcap1.gz; a name that does not say is told by its content)",
    )
    p.add_argument("--guids", type=Path, help="GUID list (.xlsx, .csv or text)")
    p.add_argument("--inventory", type=Path, help="inventory CSV (esme, comms_hub, mpxn, ...)")
    p.add_argument("--certs", type=Path, help="DUIS signing certificates (dir or keystore.json)")
    p.add_argument("--gbcs-keys", type=Path, help="GBCS device certificates/keys directory")
    live = p.add_argument_group("live replay against a running gateway (instead of the in-process engine)")
    live.add_argument("--target", metavar="URL", help="gateway ingress base URL, e.g. http://127.0.0.1:8443")
    live.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="N x real time between recorded arrivals (0 = as fast as possible; default 1)",
    )
    live.add_argument(
        "--retry-for",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="keep re-sending a message the gateway refused (503) or could not take for this long (default 30)",
    )
    live.add_argument(
        "--user",
        default=None,
        help="the DNO user in /duis/dno/{user} for every inline message (default: the user each was captured "
        "for, and the test DNO EUI 90-B3-D5-1F-30-02-00-00 for a message of a script or a directory)",
    )
    live.add_argument(
        "--gateway-config",
        type=Path,
        metavar="FILE",
        help="the live gateway's own configuration (on its host): once every message is sent, the final "
        "decision of each message it answered 'hold' is read from its decision store and written as a line",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="TOML config, the gateway's own file will do: [engine], [pipeline] trust_expired and "
        "tolerate_whitespace ([smki] too, as older replay configurations have them), and [server] max_body_bytes "
        "and content_types for captures",
    )
    p.add_argument("--jsonl", type=Path, help="write decision lines here instead of stdout")
    p.add_argument("--state", default=":memory:", help="SQLite state file (default: in memory)")
    p.add_argument("--html", type=Path, help="write a self-contained HTML report")
    p.add_argument(
        "--schema", type=Path, help="validate every message against this DUIS XSD (never evidence if invalid)"
    )
    p.add_argument(
        "--trust-expired",
        action="append",
        default=[],
        metavar="ISSUER#SERIAL",
        help="accept this expired DUIS signing certificate: issuer DN '#' decimal serial, e.g. "
        "'CN=Z1,OU=07#1234' (a bare serial matches any issuer); repeatable",
    )
    p.add_argument(
        "--crl",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="SMKI revocation list (CRL/ARL, PEM or DER; or a folder of them) besides those in --certs; "
        "checked against its issuer's certificate in --certs; repeatable",
    )
    p.add_argument("--batch", type=int, default=256, help="messages per state transaction (default 256)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that parse and verify in parallel (default: the number of CPUs; 1 = in-process)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")
    p.add_argument(
        "--follow",
        action="store_true",
        help="the capture (one file, not gzipped) is being written (tcpdump -w): read it as it grows, deciding each "
        "request (or, with --target, sending it) as it comes, until SIGINT/SIGTERM (or --idle)",
    )
    p.add_argument(
        "--rotated",
        action="store_true",
        help="with --follow: INPUT is the -w name of a capture the tool rotates (tcpdump -C/-G/-W, dumpcap -b: "
        "NAME, NAME1 ...; NAME0 ... in a ring; strftime names; PREFIX_NNNNN_TIME.EXT): its files are read one "
        "after the other as they are written; a finished file compressed by tcpdump -z gzip is read as NAME1.gz",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --follow: end once the file has not grown for this long (default: never)",
    )
    p.set_defaults(func=run)


def _fail(msg: str) -> int:
    print(f"duisgw replay: {msg}", file=sys.stderr)
    return 2


def _os_reason(exc: OSError) -> str:
    """An OSError in one line: ``file: reason`` when it names both, else its own text."""
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _open_output(path: Path | None, option: str, mode: str = "w") -> IO[str] | str:
    """``path`` opened for writing (stdout when None), or the one-line reason it cannot be."""
    if path is None:
        return sys.stdout
    try:
        return path.open(mode, encoding="utf-8")
    except OSError as exc:
        return f"{option} {path}: cannot write: {exc.strerror or exc}"


def _ingress_limits(data: dict[str, Any]) -> IngressLimits:
    """The gateway's ``[server]`` settings a capture is read with (its defaults when absent)."""
    from gateway.service.config import ServerConfig

    server = data.get("server", {})
    if not isinstance(server, dict):
        raise DuisgwError("config: [server] must be a table")
    default = ServerConfig()
    size = server.get("max_body_bytes", default.max_body_bytes)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1024:
        raise DuisgwError(f"config: server.max_body_bytes must be an integer >= 1024, got {size!r}")
    types = server.get("content_types", list(default.content_types))
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise DuisgwError(f"config: server.content_types must be a list of strings, got {types!r}")
    return IngressLimits(size, tuple(types))


def _load_config(path: Path | None) -> tuple[EngineConfig, dict[str, Any], IngressLimits]:
    if path is None:
        return EngineConfig(), _verification_options({}), _ingress_limits({})
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DuisgwError(f"config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DuisgwError(f"config {path}: not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise DuisgwError(f"config {path}: {exc}") from None
    engine = data.get("engine", {})
    if not isinstance(engine, dict):
        raise DuisgwError("config: [engine] must be a table")
    return EngineConfig.from_mapping(engine), _verification_options(data), _ingress_limits(data)


def _verification_options(data: dict[str, Any]) -> dict[str, Any]:
    """``trust_expired`` and ``tolerate_whitespace`` as the gateway reads them: from ``[pipeline]`` (the table of
    ``duisgw serve``'s configuration, so a replay given the gateway's own file verifies as the gateway does), and
    from ``[smki]``, the table replay configurations used before (``serve`` refuses it): the trusted entries of
    both, whitespace tolerated when either says so."""
    trust: list[Any] = []
    tolerate = False
    for name in ("pipeline", "smki"):
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise DuisgwError(f"config: [{name}] must be a table")
        entries = table.get("trust_expired", [])
        if not isinstance(entries, list):
            raise BadTrustEntry(f"[{name}] trust_expired must be an array")
        trust.extend(entries)
        flag = table.get("tolerate_whitespace", False)
        if not isinstance(flag, bool):
            raise DuisgwError(f"config: {name}.tolerate_whitespace must be true or false, got {flag!r}")
        tolerate = tolerate or flag
    return {"trust_expired": trust, "tolerate_whitespace": tolerate}


class _Progress:
    """A one-line progress counter on a terminal (stderr); silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.count = 0
        self.t0 = time.monotonic()
        self.last = 0.0

    def tick(self) -> None:
        self.count += 1
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last >= 0.2:
            self.last = now
            rate = self.count / max(now - self.t0, 1e-9)
            sys.stderr.write(f"\rreplay: {self.count:,} messages  {rate:,.0f}/s ")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 60 + "\r")


def _run_live(args: argparse.Namespace) -> int:
    import asyncio
    import math

    from gateway.replay_live import check_target, replay_live, store_decisions

    if math.isnan(args.speed) or args.speed < 0:
        return _fail(f"--speed must be a number >= 0, got {args.speed}")
    if math.isnan(args.retry_for) or args.retry_for < 0:
        return _fail(f"--retry-for must be a number of seconds >= 0, got {args.retry_for}")
    problem = check_target(args.target)
    if problem is not None:
        return _fail(f"--target {args.target!r}: {problem}")
    follow: Follow | None = None
    try:
        _config, _smki, limits = _load_config(args.config)  # [server] limits: read captures as it reads them
        final = store_decisions(args.gateway_config) if args.gateway_config is not None else None
        inputs: Iterator[InputMessage | InputProblem | None]
        if args.follow:
            from gateway.capture.reader import Follow

            follow = Follow(poll=FOLLOW_POLL, idle=args.idle)
            inputs = follow_capture(args.inputs, follow, limits, rotated=args.rotated)
        else:
            inputs = iter_inputs(args.inputs, limits)
    except DuisgwError as exc:
        return _fail(str(exc))
    opened = _open_output(args.jsonl, "--jsonl")
    if isinstance(opened, str):
        return _fail(opened)
    out: IO[str] = opened
    progress = _Progress(not args.quiet)

    def emit(line: dict[str, Any]) -> None:
        out.write(json.dumps(line, separators=(",", ":")) + "\n")

    stopper = _Stopper(follow) if follow is not None else None
    try:
        counts = asyncio.run(
            replay_live(
                inputs,
                args.target,
                args.user,
                speed=args.speed,
                retry_for=args.retry_for,
                emit=emit,
                tick=progress.tick,
                final=final,
                following=follow is not None,
                caught_up=out.flush,
            )
        )
    except DuisgwError as exc:
        progress.done()
        return _fail(str(exc))
    finally:
        if stopper is not None:
            stopper.restore()
        if out is not sys.stdout:
            out.close()
    progress.done()
    if not args.quiet:
        if follow is not None:
            print(f"duisgw replay: following {args.inputs[0]} ended: {follow.reason}", file=sys.stderr)
        print("duisgw replay: sent, by HTTP status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
              file=sys.stderr)  # fmt: skip
        if counts.get("lost"):
            print(f"duisgw replay: the capture is incomplete: {counts['lost']} requests the gateway got are not "
                  "in it whole and were not sent (their `lost` lines say where)", file=sys.stderr)  # fmt: skip
        if counts.get("files-lost"):
            print(f"duisgw replay: the capture is incomplete: {_files_lost(counts['files-lost'])}, and nothing of "
                  "what they held was sent (their `lost` lines name them)", file=sys.stderr)  # fmt: skip
    return 1 if live_failed(counts) else 0


def _files_lost(n: int) -> str:
    what = "file of the rotated capture was" if n == 1 else "files of the rotated capture were"
    return f"{n} {what} deleted or overwritten before being read (a ring buffer the replay fell behind)"


def live_failed(counts: dict[str, int]) -> bool:
    """Whether a live replay left a message the gateway did not take: not answered (``error``) or answered
    5xx once ``--retry-for`` was spent. A 4xx is the gateway's verdict on the input (a refused message), not
    a failure of the replay."""
    return bool(counts.get("error")) or any(k.isdigit() and int(k) >= 500 and v for k, v in counts.items())


#: how often a followed capture's size is looked at while it does not grow (seconds)
FOLLOW_POLL = 0.05


def _follow_problem(args: argparse.Namespace) -> str | None:
    """Why ``--follow``/``--idle`` cannot be used as given (None: they can)."""
    import math

    if args.idle is not None and not args.follow:
        return "--idle ends a --follow: only with --follow"
    if args.rotated and not args.follow:
        return (
            "--rotated names a capture being written (with --follow); give the files of a finished rotated "
            "capture themselves (e.g. cap.pcap*): they are read as one capture"
        )
    if not args.follow:
        return None
    if args.idle is not None and (math.isnan(args.idle) or args.idle <= 0):
        return f"--idle must be a number of seconds > 0, got {args.idle}"
    if args.workers is not None and args.workers > 1 and not args.target:
        return (
            "--follow classifies in this process, each request as it comes (worker processes take requests "
            "in chunks, which a capture being written does not fill): --workers must be 1"
        )
    return None


class _Stopper:
    """SIGINT and SIGTERM end a followed capture (as its end would), instead of the process: the first one
    stops the following; the handlers are then the ones before again, so a second one ends the process. A
    signal the process was started ignoring (a background job of a shell script, ``nohup``) stays ignored."""

    def __init__(self, follow: Follow) -> None:
        import signal

        self.follow = follow
        self.saved = {
            s: signal.signal(s, self._on_signal)
            for s in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(s) is not signal.SIG_IGN
        }

    def _on_signal(self, signum: int, _frame: Any) -> None:
        import signal

        self.follow.stop(signal.Signals(signum).name)
        self.restore()

    def restore(self) -> None:
        import signal

        for s, handler in self.saved.items():
            signal.signal(s, handler)


def run(args: argparse.Namespace) -> int:
    problem = _follow_problem(args)
    if problem is not None:
        return _fail(problem)
    if args.target:
        return _run_live(args)
    if args.gateway_config is not None:
        return _fail("--gateway-config reads a live gateway's decisions: only with --target URL")
    missing = [
        f"--{n.replace('_', '-')}"
        for n in ("guids", "inventory", "certs", "gbcs_keys")
        if getattr(args, n) is None
    ]
    if missing:
        return _fail(f"the in-process replay needs {', '.join(missing)} (or --target URL for a live gateway)")
    if args.batch < 1:
        return _fail(f"--batch must be 1 or more, got {args.batch}")
    if args.workers is not None and args.workers < 1:
        return _fail(f"--workers must be 1 (in-process) or more, got {args.workers}")
    try:
        config, verify_cfg, limits = _load_config(args.config)
        guids, _greport = import_guids(args.guids)
        inventory: Inventory
        inventory, _ireport = import_inventory_csv(args.inventory)
        certs = CertificateStore.from_path(args.certs, crls=args.crl)
        for label, err in certs.rejected:
            print(f"duisgw replay: skipped {label}: {err}", file=sys.stderr)
        keystore = load_keystore(args.gbcs_keys)
        schema = load_schema(args.schema) if args.schema else None
        trust = parse_trust_expired([*args.trust_expired, *verify_cfg["trust_expired"]])
        # every input checked and opened now: an unusable one stops the run before it starts (a followed
        # capture: checked now, read once the files the run writes are open, as it may not be written yet)
        follow: Follow | None = None
        if args.follow:
            from gateway.capture.reader import Follow

            follow = Follow(poll=FOLLOW_POLL, idle=args.idle)
        inputs: Iterator[InputMessage | InputProblem | None] = (
            follow_capture(args.inputs, follow, limits, rotated=args.rotated)
            if follow is not None
            else iter_inputs(args.inputs, limits)
        )
    except DuisgwError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(_os_reason(exc))
    policy = SigningPolicy(trust_expired=trust)
    classifier = Classifier(
        certificates=certs,
        signing_policy=policy,
        gbcs_verifier=Verifier(keystore, acb_eui=getattr(keystore, "acb_eui", None), revocation=certs),
        tolerate_whitespace=bool(verify_cfg["tolerate_whitespace"]),
        schema=schema,
    )
    # the files the run writes, before it reads a message: an unwritable one fails now, not after the run
    # (the report in append mode: a report already there stays whole until the new one replaces it)
    html_out = _open_output(args.html, "--html", "a") if args.html else None
    if isinstance(html_out, str):
        return _fail(html_out)
    opened = _open_output(args.jsonl, "--jsonl")
    if isinstance(opened, str):
        if html_out is not None:
            html_out.close()
        return _fail(opened)
    out: IO[str] = opened
    try:
        # NORMAL: WAL commits survive a killed process (what a replay needs); FULL adds power-loss safety
        store = SqliteStore(args.state, synchronous="NORMAL")
        durable = DurableEngine(store, config, guids, inventory)
    except (sqlite3.Error, OSError, DuisgwError) as exc:
        for f in (out, html_out):
            if f is not None and f is not sys.stdout:
                f.close()
        return _fail(f"--state {args.state}: {exc}")
    report = (
        ReportData(title="duisgw replay", source=", ".join(str(p) for p in args.inputs))
        if args.html
        else None
    )
    runner = ReplayRun(classifier, durable, config.hold_limit, report=report, batch_size=args.batch)
    progress = _Progress(not args.quiet)

    def emit(lines: list[dict[str, Any]]) -> None:
        for line in lines:
            out.write(json.dumps(line, separators=(",", ":")) + "\n")

    stopper = _Stopper(follow) if follow is not None else None
    try:
        emit(runner.recovered())
        workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
        if follow is not None:
            for item in inputs:
                if item is None:  # everything written so far is read: what it decided goes out now
                    emit(runner.flush())
                    out.flush()
                    continue
                emit(runner.feed(item))
                if isinstance(item, InputMessage):
                    progress.tick()
        elif workers > 1:
            spec = ClassifierSpec(args.certs, args.gbcs_keys, trust,
                                  bool(verify_cfg["tolerate_whitespace"]), args.schema,
                                  crls=tuple(args.crl))  # fmt: skip
            items = cast(Iterator[InputMessage | InputProblem], inputs)  # (None comes only when following)
            for item, classified in classify_in_workers(items, spec, workers):
                emit(runner.feed_classified(item, classified))
                if isinstance(item, InputMessage):
                    progress.tick()
        else:
            for item in inputs:
                assert item is not None  # (only when following)
                emit(runner.feed(item))
                if isinstance(item, InputMessage):
                    progress.tick()
        emit(runner.finish())
    except DuisgwError as exc:
        progress.done()
        if html_out is not None:
            html_out.close()
        return _fail(str(exc))
    finally:
        if stopper is not None:
            stopper.restore()
        if out is not sys.stdout:
            out.close()
        store.close()
    progress.done()
    skipped = sum(runner.problem_counts.values())
    by_code = ", ".join(f"{k} {v}" for k, v in sorted(runner.problem_counts.items()))
    if report is not None:
        for p in runner.problems:
            report.notes.append(f"{p.source}: {p.code}: {p.detail}")
        if skipped > len(runner.problems):
            report.notes.append(
                f"{skipped - len(runner.problems)} more skipped inputs not listed; all {skipped} by code: {by_code}"
            )
        if html_out is not None:  # opened with the report
            with html_out:
                html_out.seek(0)
                html_out.truncate()
                html_out.write(render_html(report))
    if not args.quiet:
        if follow is not None:
            print(f"duisgw replay: following {args.inputs[0]} ended: {follow.reason}", file=sys.stderr)
        summary = ", ".join(f"{k} {v}" for k, v in sorted(runner.stats.items()))
        print(f"duisgw replay: {summary or 'no messages'}", file=sys.stderr)
        if runner.stats.get("lost"):
            print(f"duisgw replay: the capture is incomplete: {runner.stats['lost']} requests the gateway got "
                  "are not in it whole (their `lost` lines say where)", file=sys.stderr)  # fmt: skip
        if runner.stats.get("files-lost"):
            print(f"duisgw replay: the capture is incomplete: {_files_lost(runner.stats['files-lost'])}, and "
                  "nothing of what they held was decided (their `lost` lines name them)", file=sys.stderr)  # fmt: skip
        if skipped:
            print(f"duisgw replay: skipped inputs by code: {by_code}", file=sys.stderr)
        # the first 20, and wherever they are the notice of a capture replayed in arrival-time order (after its
        # items) and the files of a rotated capture lost
        shown = runner.problems[:20] + [p for p in runner.problems[20:] if p.code in ("reordered", FILE_LOST)]
        for p in shown:
            what = "" if p.code == "reordered" else "skipped "  # a notice: nothing of the input was skipped
            print(f"duisgw replay: {what}{p.source}: {p.code}: {p.detail}", file=sys.stderr)
    return 0
