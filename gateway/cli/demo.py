"""``duisgw demo``: the bundled demonstration, live (the README's first command runs it).

It builds the bundled scenario (:mod:`gateway.testkit.demo`: signed DUIS traffic of a firmware
campaign morning, from a self-contained test PKI) into a work directory (``--out``, new or empty,
default a temporary one), then starts the real gateway (the ``duisgw serve`` assembly: HTTP ingress, XML and
GBCS signature verification, correlation engine on an embedded SQLite state, durable outbox) on a
free port of 127.0.0.1 with ``clock = "message"``, a stub DNO receiver (aiohttp), and a DSP
simulator that POSTs every message over HTTP in arrival order (``/duis/observe`` and
``/duis/dno/{user}``, event time in ``X-DUISGW-Arrival``). Holds are released as later messages
arrive; at the end event time is advanced past the hold limit (``POST /admin/tick``).

It prints what the DNO receiver got and what was suppressed (with the reasons), checks every inline
message against the scenario's expectation — the decision, and that forwarded messages arrived
byte-identical while suppressed ones never arrived — and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["register"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run the bundled demonstration live: gateway + DSP simulator + DNO stub"
    )
    p.add_argument("--out", type=Path, help="work directory to keep, new or empty (default: a temporary one)")
    p.set_defaults(func=run)


@dataclass
class _Row:
    label: str
    message_id: str
    expected: str
    decision: str
    reason: str
    held: bool
    delivered: bool
    intact: bool

    @property
    def ok(self) -> bool:
        if self.decision != self.expected:
            return False
        if self.decision == "forward":
            return self.delivered and self.intact
        return not self.delivered


async def _run(work: Path) -> int:
    from gateway.service.app import admin_endpoint
    from gateway.service.config import LoggingConfig
    from gateway.service.logs import configure_logging
    from gateway.service.serve import build_gateway, load_serve_config, make_service
    from gateway.service.simulate import DnoStub, DspSimulator, TimedMessage
    from gateway.store.sqlite import SqliteStore as EngineStore
    from gateway.testkit.demo import demo_scenario
    from gateway.testkit.messages import DNO_EUI
    from gbcs.eui import format_eui

    t0 = time.monotonic()
    scenario = demo_scenario()
    paths = scenario.write(work)
    inline = [s for s in scenario.steps if s.lane == "inline"]
    print(f"duisgw demo: {scenario.description}")
    print(f"  {len(scenario.steps)} signed DUIS messages ({len(inline)} DNO-bound) written to {work}")

    configure_logging(LoggingConfig(level="WARNING", format="text"))
    stub = DnoStub()
    await stub.start()
    config_file = work / "gateway.toml"
    config_file.write_text(
        _CONFIG.format(
            certs=_toml_path(paths["certs"]),
            keys=_toml_path(paths["gbcs_keys"]),
            guids=_toml_path(paths["guids"]),
            inventory=_toml_path(paths["inventory"]),
            user=format_eui(DNO_EUI),
            url=stub.url,
        ),
        encoding="utf-8",
    )
    cfg, base = load_serve_config(config_file)
    gateway = await asyncio.get_running_loop().run_in_executor(None, build_gateway, cfg)
    service = make_service(gateway, base_dir=base)
    await service.start()
    print(f"  gateway on http://127.0.0.1:{service.port} (admin :{service.admin_port}), "
          f"DNO stub on {stub.url}; config {config_file}")  # fmt: skip
    try:
        async with DspSimulator(f"http://127.0.0.1:{service.port}", "dno") as dsp:
            answers = await dsp.run(TimedMessage(s.at, s.lane, s.body) for s in scenario.steps)
        bad = [(s.label, a.status, a.text.strip()) for s, a in zip(scenario.steps, answers, strict=True)
               if a.status >= 300]  # fmt: skip
        for label, status, text in bad:
            print(f"  gateway answered {status} to {label!r}: {text}", file=sys.stderr)
        end = max(s.at for s in scenario.steps) + gateway.engine_config.hold_limit + timedelta(seconds=1)
        admin = admin_endpoint(cfg.admin, service.admin_port, base)  # https and the token when configured
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{admin.url}/admin/tick", json={"now": end.isoformat()}, headers=admin.headers, ssl=admin.ssl
            ) as resp,
        ):
            resp.raise_for_status()
        expected = {str(e["message_id"]): str(e["decision"]) for e in scenario.expected()}
        await stub.wait_for(sum(1 for d in expected.values() if d == "forward"), timeout=5.0)
        await asyncio.sleep(0.3)  # anything wrongly delivered would show up now
    finally:
        await service.stop()
        await stub.stop()

    store = EngineStore(gateway.engine_db)
    try:
        rows = []
        got = {r.message_id: r.body for r in stub.received}
        sent = {s.message_id: s.body for s in inline}
        labels: dict[str, str] = {}
        for s in inline:
            labels.setdefault(s.message_id, s.label)
        for mid, label in labels.items():
            audit = store.audit(mid)
            final = [a for a in audit if a.get("action") != "hold"]
            last = final[-1] if final else (audit[-1] if audit else {})
            action = str(last.get("action", "none"))
            decision = {"forward": "forward", "release-forward": "forward", "suppress": "suppress",
                        "release-suppress": "suppress"}.get(action, action)  # fmt: skip
            rows.append(
                _Row(
                    label,
                    mid,
                    expected.get(mid, "?"),
                    decision,
                    str(last.get("reason", "")),
                    any(a.get("action") == "hold" for a in audit),
                    mid in got,
                    got.get(mid) == sent[mid],
                )
            )
    finally:
        store.close()
    bad_answers = len(bad)
    return _report(rows, stub_count=len(stub.received), unique=len(stub.unique_ids()), errors=bad_answers,
                   elapsed=time.monotonic() - t0)  # fmt: skip


_CONFIG = """# written by `duisgw demo`: the live demo's gateway (try `duisgw audit list --config THIS`)
mode = "pipeline"
clock = "message"
tick_interval = 0.2

[server]
host = "127.0.0.1"
port = 0
shutdown_timeout = 2.0

[admin]
host = "127.0.0.1"
port = 0

[store]
path = "gateway/outbox.sqlite3"
synchronous = "NORMAL"

[outbox]
backoff_initial = 0.05
backoff_max = 0.5
poll_interval = 0.2
drain_timeout = 2.0

[logging]
level = "WARNING"
format = "text"

[pipeline]
state_dir = "gateway/state"
certificates = {certs}
gbcs_keys = {keys}
guids = {guids}
inventory = {inventory}
synchronous = "NORMAL"

[engine]
hold_limit = "10m"

[[destinations]]
name = "dno"
user = "{user}"
url = "{url}"
"""


def _report(rows: list[_Row], *, stub_count: int, unique: int, errors: int, elapsed: float) -> int:
    print()
    print("Received by the DNO (forwarded, original bytes):")
    for r in rows:
        if r.delivered:
            intact = "byte-identical" if r.intact else "BYTES DIFFER"
            print(f"  {r.label[:50]:<50} {r.reason:<20} {intact}")
    print()
    print("Suppressed (kept in the gateway, auditable, releasable):")
    for r in rows:
        if r.decision == "suppress":
            held = " (held first)" if r.held else ""
            print(f"  {r.label[:50]:<50} {r.reason}{held}")
    mismatches = [r for r in rows if not r.ok]
    print()
    for r in mismatches:
        print(f"  MISMATCH {r.label}: expected {r.expected}, got {r.decision} ({r.reason}), "
              f"delivered={r.delivered}, byte-identical={r.intact}", file=sys.stderr)  # fmt: skip
    forwarded = sum(r.decision == "forward" for r in rows)
    suppressed = sum(r.decision == "suppress" for r in rows)
    print(f"forwarded {forwarded}, suppressed {suppressed}; the DNO stub received {unique} distinct "
          f"message(s) in {stub_count} delivery(ies); {elapsed:.1f} s")  # fmt: skip
    if mismatches or errors:
        print(f"duisgw demo: {len(mismatches)} message(s) differ from the scenario's expectation, "
              f"{errors} request(s) refused", file=sys.stderr)  # fmt: skip
        return 1
    print("every decision matches the scenario's expectation")
    return 0


def _toml_path(path: Path) -> str:
    """``path`` as a TOML basic string (JSON's escapes are TOML's: a quote or backslash in a name is kept)."""
    return json.dumps(str(path), ensure_ascii=False)


def run(args: argparse.Namespace) -> int:
    if args.out is not None:
        # absolute: the config written there names the reference files, and serve resolves relative
        # paths against the config's own folder (a relative --out named them twice: out/out/certs)
        work = args.out.resolve()
        try:
            work.mkdir(parents=True, exist_ok=True)
            kept = next(work.iterdir(), None)
        except OSError as exc:
            print(f"duisgw demo: cannot use --out {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        if kept is not None:  # (a previous run's stores would answer every message as a re-delivery)
            print(f"duisgw demo: cannot use --out {args.out}: not empty (a previous run's state would answer "
                  "every message as a re-delivery): give a new or empty folder", file=sys.stderr)  # fmt: skip
            return 2
        return asyncio.run(_run(work))
    with tempfile.TemporaryDirectory(prefix="duisgw-demo-") as tmp:
        return asyncio.run(_run(Path(tmp)))
