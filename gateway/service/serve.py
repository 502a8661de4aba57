"""``duisgw serve`` assembled: reference data, the decision pipeline, the service, reloads, admin.

Theory of operation
===================

:func:`build_gateway` reads what the pipeline needs from the configuration (SMKI certificates, GBCS
device certificates, GUID list, inventory snapshot, ``[engine]`` policy, state folder) into a
:class:`Gateway`; :meth:`Gateway.processor_factory` is the
:data:`gateway.service.app.ProcessorFactory` that builds the :class:`GatewayProcessor` once the
transport store is open. :func:`serve` runs the whole service until SIGTERM/SIGINT and reloads the
TLS material and the admin token (:meth:`gateway.service.app.Service.reload_transport`, first: a refused
reference list never keeps a rotated certificate or a new CRL out), the SMKI certificate store (with its
revocation lists), the GBCS device key store, the GUID list and the inventory on SIGHUP (or ``POST
/admin/reload`` on the admin listener). In ``mode = "passthrough"`` SIGHUP and ``POST /admin/reload`` reload
the transport only.

*GUID list.* Imported once from the configured source and persisted next to the state as
``guids.bin`` (:meth:`gateway.guids.GuidSet.save`, with the source's SHA-256). At start-up and on
reload the binary form is reused when the source's digest is unchanged, else the source is
imported again and the binary form replaced atomically. A source that cannot be imported never
replaces it, so ``guids.bin`` is the *last good list*. A reload keeps the list in force, and a
start-up uses that list when it was imported from the same source path with the same settings
(:func:`last_good_guid_list`); either logs the refusal at ERROR and flags the list stale
(:attr:`Gateway.stale`, ``duisgw_reference_stale{source="guids"}`` = 1, ``stale`` in ``/admin/state``,
``guids.refused`` in a reload's report) until a reload imports the source; without such a list the
start-up fails (``serve`` exits 2). A source that is not there at all is handled alike at start-up: the
configuration's validation (:func:`pipeline_problems`, through :func:`reference_source_checks`) accepts it
when that last good list may stand in (``config check`` warns, naming it) and refuses it, saying why, when
it may not. ``/readyz``
stays ready on a stale list: it decides as before the source was replaced, and a not-ready inline
gateway would stop every DNO's traffic.

*Inventory snapshot.* Each snapshot accepted (start-up or reload) is kept byte for byte as
``state_dir/inventory.last-good.csv``, with ``inventory.last-good.csv.import`` recording the source
path, its SHA-256 and when it was imported (:func:`keep_last_good_inventory`; copied only when the
digest changed, and only when the bytes copied are the bytes imported). A refused inventory source is
handled as the GUID list's: a reload keeps the snapshot in force, serve starts on that copy when it was
taken from the same source path and still has the recorded digest (:func:`last_good_inventory`,
imported again by the same importer); either logs the refusal at ERROR and flags it stale
(``duisgw_reference_stale{source="inventory"}`` = 1, ``inventory.refused`` in a reload's report) until a
reload imports the source; without one the start-up exits 2. So is a source that is not there at all
at start-up.
The GBCS device certificates go the same way: ``state_dir/gbcs-keys.idx`` (:mod:`gateway.gbcs_keys`) is
reused while the key folder's listing is unchanged (the certificates are then parsed on first use, and
the classify and ingress worker processes map the same file, named in their spec by a
:class:`gateway.gbcs_keys.KeyStoreRef`), else rebuilt.

*GBCS device key store on reload* (:func:`gateway.gbcs_keys.reload_keystore`, in a worker thread): the
same listing keeps the key store in force (``unchanged``); a key folder that cannot be read, or unreadable
files that would take away certificates in force, keep it, and the index file, as they were (ERROR,
``duisgw_reference_stale{source="gbcs_keys"}`` = 1, ``stale`` in ``/admin/state``, ``gbcs_keys.refused``
in the report) until a reload succeeds; an accepted folder becomes the new index, swapped in with the SMKI
store in one step (:meth:`Gateway._reload_classifier`: the gateway process's classifier, then every worker
in one round). A key index found corrupt while serving (by this process, or relayed by a classify or an
ingress worker) sets off that part of the reload by itself (:meth:`Gateway.key_index_corrupt`,
:meth:`Gateway.rebuild_keys`): in a worker thread, under the reload lock, at most one start per
:data:`KEY_HEAL_INTERVAL`; WARNING and ``duisgw_gbcs_key_index_rebuilds_total{trigger="corrupt"}``.

*SMKI certificates and revocation lists.* The SMKI certificate store is read with its revocation lists
(the ``certificates`` folder's ``*.crl``/``*.arl`` files and ``[pipeline] crl_dir``; :mod:`gateway.smki`)
at start-up and on every reload: the gateway process reads the files once into a
:class:`gateway.smki.SmkiMaterial` (names and bytes), builds its store from it, and the classify and
ingress worker processes build theirs from the same bytes (at start through their spec, on reload through
a control message on their channel), so every process holds the same *generation*. A refused list is
logged at ERROR (``duisgw_smki_crls_refused``), an issuer whose list is past its nextUpdate (or its signer's expiry) at WARNING and
in ``duisgw_smki_crl_stale``, evaluated on the wall clock at every scrape (its signatures are not evidence:
fail-closed).

On reload the new store is built in a worker thread, then judged (:func:`gateway.smki.replacement_problem`):
a certificate source that cannot be read, a store without a certificate, or refused files that would take
away a certificate or an issuer's revocation lists in force keep the store in force, all of it (ERROR,
``duisgw_reference_stale{source="smki"}`` = 1, ``stale`` in ``/admin/state``, ``smki.refused`` in the
report) until a reload succeeds; the GUID list and the inventory still reload (and a refused GUID list
or inventory never keeps a new SMKI store or key store out). Unchanged bytes (same
digest) keep the generation. Otherwise the gateway process swaps its classifier (one reference: a message
is verified wholly against the store it started with), then every worker does
(:meth:`ClassifyPool.reload`, :meth:`IngressPool.reload`), and the reload
returns when all have, or were replaced.

*Hot reload.* The engine reads the GUID list and the inventory through
:class:`gateway.guids.GuidRegistry` / :class:`gateway.inventory.InventoryRegistry`: a new list or
snapshot is built completely (in a worker thread, while traffic flows), then swapped in with one
reference assignment. Inventory links learned from traffic are re-applied on top of the new
snapshot (they are also engine state, restored at start-up), so they survive reloads and restarts.

*Garbage collector.* Once the engine is restored (start-up) and after each reload, :func:`serve`
runs one full collection and then ``gc.freeze()``: what was loaded leaves the collector's scans.
Otherwise every full collection walks the restored engine state (212–223 ms for 100,000
activations on a 1.4 M-meter world, measured), stopping every thread, traffic included. Frozen
objects are still freed by reference counting; the pauses are exported as
``duisgw_gc_pause_seconds``. On exit the heap is unfrozen (an in-process caller gets it back).

*Reload report.* Every part is judged on its own, and the report of a reload (the answer of ``POST
/admin/reload``; one log line for SIGHUP, at WARNING when a part was refused) names every part's outcome
whatever fails: ``tls`` by section, ``admin_token``, ``smki``, ``gbcs_keys``, ``guids``, ``inventory``,
each with its ``status`` (``reloaded``, ``unchanged``, ``refused`` with the reason under ``refused``), and
``status`` ``reloaded`` when every part was taken, else ``refused`` with ``refused_parts`` and ``error``
(:func:`gateway.service.app.reload_outcome`). ``POST /admin/reload`` answers 422 when the GUID list or the
inventory was refused, 200 otherwise (a refused SMKI, key or TLS part shows in ``status`` and the gauge).

*Admin endpoints* (on the admin listener): ``POST /admin/reload`` (JSON report), ``GET
/admin/state`` (engine clock, held messages, batches), and with ``clock = "message"`` ``POST
/admin/tick`` with ``{"now": ISO-8601}`` to advance event time (demos and tests); with ``[admin]
token_file`` each needs ``Authorization: Bearer TOKEN`` (:func:`gateway.service.app.admin_auth_middleware`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import hashlib
import json
import logging
import signal
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from aiohttp import web

from gateway.duis.schema import load_schema
from gateway.engine.config import EngineConfig
from gateway.engine.errors import EngineConfigError, StoreError
from gateway.errors import DuisgwError
from gateway.gbcs_keys import IndexedKeyStore, KeyStoreReload, load_keystore, reload_keystore
from gateway.guids import (
    IMPORTER_VERSION,
    GuidFileError,
    GuidImportError,
    GuidMeta,
    GuidRegistry,
    GuidSet,
    atomic_write_bytes,
    file_sha256,
    import_guids,
)
from gateway.inventory import Inventory, InventoryImportError, InventoryRegistry, import_inventory_csv
from gateway.pipeline import Classifier, ClassifierSpec
from gateway.service.api import Processor, StoreUnavailable
from gateway.service.app import (
    PassThroughProcessor,
    Service,
    ServiceContext,
    reload_outcome,
    reload_summary,
)
from gateway.service.config import PipelineConfig, ServiceConfig, load_config
from gateway.service.logs import configure_logging
from gateway.service.metrics import Metrics
from gateway.service.outbox import SqliteStore as TransportStore
from gateway.service.processor import (
    BadArrivalHeader,
    GatewayProcessor,
    arrival_middleware,
    engine_clock,
    held_count,
    parse_arrival,
)
from gateway.smki import (
    CertificateStore,
    SigningPolicy,
    SmkiError,
    SmkiMaterial,
    UnusableCrl,
    parse_trust_expired,
    replacement_problem,
)
from gateway.store.durable import DurableEngine
from gateway.store.redis_state import MAX_CLOCK_AHEAD, RedisStateConfig
from gateway.store.shared import SharedEngine
from gateway.store.sqlite import SqliteStore as EngineStore
from gateway.store.sqlite import connect_read_only
from gbcs.crypto import Verifier

__all__ = [
    "ENGINE_DB",
    "GUIDS_BIN",
    "INVENTORY_LAST_GOOD",
    "Gateway",
    "build_gateway",
    "engine_db_path",
    "engine_problems",
    "keep_last_good_inventory",
    "last_good_guid_list",
    "last_good_inventory",
    "last_good_inventory_intact",
    "load_guid_list",
    "load_serve_config",
    "make_service",
    "pipeline_problems",
    "reference_source_checks",
    "reference_source_warnings",
    "report_certificate_store",
    "resolve_paths",
    "serve",
    "watch_revocation_lists",
]

log = logging.getLogger("duisgw.serve")

_T = TypeVar("_T")

ENGINE_DB = "engine.sqlite3"
GUIDS_BIN = "guids.bin"
INVENTORY_LAST_GOOD = "inventory.last-good.csv"
GBCS_KEYS_INDEX = (
    "gbcs-keys.idx"  # the persisted GBCS key index (gateway.gbcs_keys), rebuilt when the folder changes
)
#: seconds between the starts of two rebuilds of the GBCS key index after it was found corrupt
#: (:meth:`Gateway.key_index_corrupt`): a key folder that keeps producing a corrupt index costs one rebuild
#: (a walk of the folder, a parse, a write) per interval, never a loop
KEY_HEAL_INTERVAL = 30.0


def engine_problems(engine: Mapping[str, Any]) -> list[str]:
    """The ``[engine]`` table checked by :meth:`EngineConfig.from_mapping` (for ``config check``).

    Every failure is a listed problem, never an exception: out-of-range values (a duration of
    ``1e400`` seconds or ``"99999999999d"``) raise ``OverflowError`` in ``timedelta``."""

    def check(data: Mapping[str, Any]) -> str | None:
        try:
            EngineConfig.from_mapping(data)
        except EngineConfigError as exc:
            return exc.message
        except (TypeError, ValueError) as exc:
            return str(exc)
        except OverflowError as exc:
            return f"out of range ({exc})"
        except Exception as exc:  # an unforeseen failure is still a problem of this table, with its type
            return f"unusable ({type(exc).__name__}: {exc})"
        return None

    whole = check(engine)
    if whole is None:
        return []
    # name the offending keys when each fails on its own; otherwise it is a cross-field rule
    per_key = [
        msg if msg.startswith(f"{key}: ") else f"{key}: {msg}"
        for key, value in engine.items()
        if (msg := check({key: value})) is not None
    ]
    return per_key or [whole]


def pipeline_problems(cfg: ServiceConfig, base: Path | None = None) -> list[str]:
    """What ``duisgw serve`` needs beyond the generic checks; ``duisgw config check`` runs it too (through
    :func:`load_serve_config`), so that its "ok" means serve accepts the file. ``base`` is the config
    file's folder (relative paths; the working folder when ``None``).

    A GUID list or inventory source that is not there (:func:`reference_source_checks`) is a problem
    only when no last good form of it may stand in (in pipeline mode; always in passthrough mode)."""
    out = reference_source_checks(cfg, base)[0]
    if cfg.mode != "pipeline":
        return out
    if not cfg.pipeline.certificates:
        out.append("pipeline.certificates: required in pipeline mode")
    if not cfg.pipeline.gbcs_keys:
        out.append("pipeline.gbcs_keys: required in pipeline mode")
    return out


def reference_source_warnings(cfg: ServiceConfig, base: Path | None = None) -> list[str]:
    """The GUID list and inventory sources that are not there but whose last good form serve starts on
    (what ``duisgw config check`` prints as warnings): :func:`reference_source_checks`."""
    return reference_source_checks(cfg, base)[1]


def reference_source_checks(cfg: ServiceConfig, base: Path | None = None) -> tuple[list[str], list[str]]:
    """``[pipeline] guids`` and ``inventory`` set to a path that is not a file: (problems, warnings).

    A source missing at start-up (a workbook on a network mount briefly absent) is handled as one that
    is refused (:func:`_start_guid_list`, :func:`_start_inventory`): in pipeline mode it is a warning
    naming the last good form serve starts on when that form may stand in for this very source (the
    checks of :func:`last_good_guid_list` / :func:`last_good_inventory`: same path and settings, intact,
    matching its record), else a problem saying why there is none (no state folder, nothing imported
    from that path yet, ...): serve exits 2. In passthrough mode (no reference data) it is a problem."""
    problems: list[str] = []
    warnings: list[str] = []
    raw = cfg.pipeline
    pl = resolve_paths(cfg, base if base is not None else Path.cwd()).pipeline
    for option, shown, path in (("guids", raw.guids, pl.guids), ("inventory", raw.inventory, pl.inventory)):
        if not path or Path(path).is_file():
            continue
        missing = f"pipeline.{option}: file not found: {shown}"
        if cfg.mode != "pipeline":
            problems.append(missing)
            continue
        try:
            fallback, why_not = _missing_source_fallback(option, pl)
        except Exception as exc:  # a validator lists problems, it never raises
            fallback, why_not = None, f"its last good form cannot be read ({type(exc).__name__}: {exc})"
        if fallback is None:
            what = "GUID list" if option == "guids" else "inventory"
            problems.append(f"{missing}; no last good {what} to start with: {why_not}")
        else:
            warnings.append(
                f"{missing}; serve starts on {fallback}, flagged stale until a reload imports the source"
            )
    return problems, warnings


def _missing_source_fallback(option: str, pl: PipelineConfig) -> tuple[str | None, str]:
    """What serve would start on for the missing source ``option`` (paths resolved), or ``None`` and why
    there is nothing."""
    state_dir = Path(pl.state_dir)
    if option == "guids":
        guids, why_not = last_good_guid_list(pl.guids, state_dir, pl.guid_column, pl.guid_sheets)
        if guids is None:
            return None, why_not
        imported_at = cast(GuidMeta, guids.meta).imported_at.isoformat()
        return (
            f"the last good list imported from it ({state_dir / GUIDS_BIN}: {len(guids):,} EUIs, imported "
            f"{imported_at})",
            "",
        )
    esmes, why_not, imported_at = last_good_inventory_intact(pl.inventory, state_dir)
    if why_not:
        return None, why_not
    count = f"{esmes:,} ESMEs, " if esmes is not None else ""
    return (
        f"the last good snapshot taken from it ({state_dir / INVENTORY_LAST_GOOD}: {count}imported {imported_at})",
        "",
    )


def _retention(seconds: float) -> timedelta | None:
    """A ``*_retention_seconds`` option as the processor takes it: 0 = kept for ever (None)."""
    return timedelta(seconds=seconds) if seconds > 0 else None


def _abs(path: str, base: Path) -> str:
    if not path:
        return path
    p = Path(path)
    return str(p if p.is_absolute() else (base / p))


def _in_store(cfg: ServiceConfig) -> bool:
    return cfg.pipeline.state_in_store and cfg.state.backend != "redis"


def engine_db_path(cfg: ServiceConfig) -> Path:
    """The database file of a pipeline's decision state: the transport store's (``[store] path``) with
    ``[pipeline] state_in_store`` on the SQLite backend, else ``state_dir/engine.sqlite3``."""
    return Path(cfg.store.path) if _in_store(cfg) else Path(cfg.pipeline.state_dir) / ENGINE_DB


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _table_has_rows(conn: sqlite3.Connection, table: str) -> bool:
    return table in _tables(conn) and conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None


def _has_messages(path: Path) -> bool:
    """Whether the SQLite file ``path`` exists and holds decision-state messages (read-only look)."""
    if not path.is_file():
        return False
    conn = connect_read_only(path)
    try:
        return _table_has_rows(conn, "messages")
    finally:
        conn.close()


def resolve_paths(cfg: ServiceConfig, base: Path) -> ServiceConfig:
    """The config with the store and pipeline paths made absolute against ``base`` (the config's folder)."""
    pl = cfg.pipeline
    pipeline = dataclasses.replace(
        pl,
        state_dir=_abs(pl.state_dir, base),
        certificates=_abs(pl.certificates, base),
        gbcs_keys=_abs(pl.gbcs_keys, base),
        schema=_abs(pl.schema, base),
        guids=_abs(pl.guids, base),
        inventory=_abs(pl.inventory, base),
    )
    store = dataclasses.replace(cfg.store, path=_abs(cfg.store.path, base))
    return dataclasses.replace(cfg, pipeline=pipeline, store=store)


def load_serve_config(path: str | Path) -> tuple[ServiceConfig, Path]:
    """Load, validate (service, ``[engine]``, pipeline requirements) and resolve a config file.

    The one validation of ``duisgw serve`` and ``duisgw config check``; raises :class:`ConfigError`."""
    p = Path(path)
    base = p.resolve().parent
    cfg = load_config(
        p, engine_validator=engine_problems, service_validator=functools.partial(pipeline_problems, base=base)
    )
    return resolve_paths(cfg, base), base


def load_state_config(path: str | Path) -> tuple[ServiceConfig, Path]:
    """Load and resolve a config file for a reader of the gateway's state (``duisgw audit``): the options' names
    and types, ``[engine]``, and the rules on where the state is (``[store]``, ``[pipeline] state_dir``,
    ``[state]``), but none of the files the service itself reads: an operator without the service's private keys,
    or during an incident that stops ``serve`` (a revocation list past its ``nextUpdate``, a missing GUID list),
    can still read the decisions. Raises :class:`ConfigError`."""
    p = Path(path)
    base = p.resolve().parent
    return resolve_paths(load_config(p, engine_validator=engine_problems, state_only=True), base), base


def load_guid_list(
    source: str,
    state_dir: Path,
    column: str = "",
    sheets: Sequence[str] = (),
    max_rejected: float = 1.0,
) -> tuple[GuidSet, str]:
    """The GUID list: ``state_dir/guids.bin`` when it was made from this very source with these
    settings (``column``, ``sheets``) by this importer (:data:`gateway.guids.IMPORTER_VERSION`), which
    ``guids.bin.import`` beside it records; else a fresh import (then persisted). A source with more
    than ``max_rejected`` of its non-blank rows rejected is refused (:class:`GuidImportError`); what was
    rejected or skipped is logged either way. Returns the set and ``"reused"``, ``"imported"`` or
    ``"empty"``."""
    return _load_guid_list(source, state_dir, column, sheets, max_rejected)[:2]


def _load_guid_list(
    source: str, state_dir: Path, column: str, sheets: Sequence[str], max_rejected: float
) -> tuple[GuidSet, str, dict[str, Any]]:
    """:func:`load_guid_list`, and what the import found (for the reload report; empty when reused)."""
    if not source:
        return GuidSet.from_iterable([]), "empty", {}
    src = Path(source)
    digest = file_sha256(src)
    binary = state_dir / GUIDS_BIN
    settings = {
        "importer": IMPORTER_VERSION,
        "source_sha256": digest,
        "column": column,
        "sheets": list(sheets),
    }
    if binary.is_file():
        try:
            cached = GuidSet.load(binary)
        except GuidFileError as exc:
            log.warning("persisted GUID list unusable, importing again", extra={"error": str(exc)})
        else:
            recorded = _read_settings(binary)
            if (
                cached.meta is not None
                and cached.meta.source_sha256 == digest
                and recorded is not None
                and {k: v for k, v in recorded.items() if k != "source"} == settings
            ):
                if recorded.get("source") != str(src):  # recorded by an older version, or the file moved
                    _write_settings(binary, {**settings, "source": str(src)})
                return cached, "reused", {}
    guids, report = import_guids(src, column=column or None, sheets=list(sheets) or None)
    found = _import_findings(report.as_dict())
    _log_import("GUID list", report.as_dict(), found)
    report.check_rejected(max_rejected, "[pipeline] max_rejected_fraction")
    # the digest of what was read (the import refuses a file that changed while it read it)
    settings["source_sha256"] = report.source_sha256
    meta = GuidMeta(source_name=src.name, source_sha256=report.source_sha256, imported_at=datetime.now(UTC))
    guids = guids.with_meta(meta)
    state_dir.mkdir(parents=True, exist_ok=True)
    guids.save(binary)
    _write_settings(binary, {**settings, "source": str(src)})
    return guids, "imported", found


def _settings_path(binary: Path) -> Path:
    return binary.with_name(binary.name + ".import")


def _write_settings(binary: Path, settings: Mapping[str, Any]) -> None:
    atomic_write_bytes(_settings_path(binary), json.dumps(settings, sort_keys=True).encode("utf-8"))


def last_good_guid_list(
    source: str, state_dir: Path, column: str = "", sheets: Sequence[str] = ()
) -> tuple[GuidSet | None, str]:
    """The list ``state_dir/guids.bin`` holds, when it may stand in for ``source`` that cannot be
    imported: the last list imported from this very source file (path) with these settings
    (``column``, ``sheets``) by this importer, intact, and matching the settings recorded beside it
    (``guids.bin.import``). Else ``None`` and why it may not (a list of another source or other
    settings would decide on other meters)."""
    binary = state_dir / GUIDS_BIN
    if not binary.is_file():
        return None, f"{binary} does not exist"
    try:
        cached = GuidSet.load(binary)
    except (GuidFileError, OSError) as exc:
        return None, f"{binary} is unusable ({exc})"
    recorded = _read_settings(binary)
    if recorded is None:
        return (
            None,
            f"the settings {binary} was imported with are unknown ({_settings_path(binary).name} unreadable)",
        )
    if recorded.get("source") != str(Path(source)):
        return None, f"{binary} was imported from another source ({recorded.get('source') or 'not recorded'})"
    for key, now in (("importer", IMPORTER_VERSION), ("column", column), ("sheets", list(sheets))):
        if recorded.get(key) != now:
            return None, f"{binary} was imported with another {key} ({recorded.get(key)!r}, now {now!r})"
    if cached.meta is None or cached.meta.source_sha256 != recorded.get("source_sha256"):
        return None, f"{binary} is not the list {_settings_path(binary).name} describes"
    return cached, ""


def _read_settings(binary: Path) -> dict[str, Any] | None:
    """The import settings recorded beside a persisted list (None when missing or unreadable: a list
    persisted by an older version, imported again)."""
    try:
        data = json.loads(_settings_path(binary).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_FINDINGS = (
    "rows_read",
    "blank",
    "accepted",
    "duplicates",
    "unique",
    "skipped",
    "skipped_by_type",
    "rejected_count",
    "rejected_by_reason",
    "warning_count",
    "sheets_skipped",
)


def _import_findings(report: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an import report an operator needs after a start-up or reload: counts, reasons,
    sheets read and skipped, and the first few rejected rows and warnings (the CLI lists them all)."""
    found = {k: report[k] for k in _FINDINGS if k in report}
    if "sheets" in report:
        found["sheets"] = [
            {k: s[k] for k in ("name", "column", "header", "rows_read")} for s in report["sheets"]
        ]
    if "columns" in report:
        found["columns"] = report["columns"]
    found["first_rejected"] = report["rejected"][:5]
    found["first_warnings"] = report["warnings"][:5]
    return found


def _log_import(what: str, report: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """One log record per import: INFO when clean, WARNING when rows were rejected, sheets skipped or
    warnings raised, with the reasons and the first rows (row/sheet/column) in the record."""
    troubled = report.get("rejected_count") or report.get("warning_count") or report.get("sheets_skipped")
    level = logging.WARNING if troubled else logging.INFO
    count, unit = (found["unique"], "EUIs") if "unique" in found else (found["accepted"], "ESMEs")
    message = f"{what} imported from {Path(report['source']).name}: {count:,} {unit}"
    if report.get("skipped"):  # an inventory's rows of other device types (GSME, CHF ...)
        by_type = ", ".join(f"{t} {n:,}" for t, n in report["skipped_by_type"].items())
        message += f", {report['skipped']:,} rows of other device types skipped ({by_type})"
    if troubled:  # the message itself says what (the text log format shows no extras)
        first = found["first_rejected"][0] if found["first_rejected"] else None
        message += f"; {report['rejected_count']:,} rows rejected"
        if report.get("rejected_by_reason"):
            message += " (" + ", ".join(f"{k} {v:,}" for k, v in report["rejected_by_reason"].items()) + ")"
        if first is not None:
            where = f"row {first['row']}"
            if "sheet" in first:
                where = f"sheet {first['sheet']!r} {where}"
            message += f", first {where}: {first['reason']}"
        if report.get("warning_count"):
            reason = found["first_warnings"][0]["reason"]
            message += f"; {report['warning_count']:,} warnings (first: {reason})"
        if report.get("sheets_skipped"):
            message += "; sheets skipped: " + ", ".join(
                f"{s['name']!r} ({s['reason']})" for s in report["sheets_skipped"]
            )
    log.log(level, message, extra={"source": report["source"], "import": json.dumps(found, sort_keys=True)})


def _load_inventory(
    source: str, max_rejected: float = 1.0, state_dir: Path | None = None
) -> tuple[Inventory, dict[str, Any]]:
    """The inventory snapshot (none when ``source`` is empty) and what the import found; refused
    (:class:`InventoryImportError`) when more than ``max_rejected`` of its non-blank rows are rejected.
    An accepted snapshot is kept in ``state_dir`` as the last good one (:func:`keep_last_good_inventory`)."""
    if not source:
        return Inventory(), {}
    inventory, report = import_inventory_csv(source)
    found = _import_findings(report.as_dict())
    _log_import("inventory", report.as_dict(), found)
    report.check_rejected(max_rejected, "[pipeline] max_rejected_fraction")
    if state_dir is not None:
        keep_last_good_inventory(Path(source), report.source_sha256, state_dir, esmes=len(inventory))
    return inventory, found


def keep_last_good_inventory(source: Path, digest: str, state_dir: Path, *, esmes: int | None = None) -> bool:
    """Keep the bytes of an accepted inventory snapshot (SHA-256 ``digest``, what the import read) as
    ``state_dir/inventory.last-good.csv``, with the source path, digest, import time and (``esmes``) its
    number of ESMEs recorded beside it (``.import``), unless the copy there already is that snapshot of
    that source. Bytes that are not
    the ones imported (the source replaced since) are not kept. Never fails the import: a copy that
    cannot be written is logged at WARNING (the previous copy, if any, stays). True when written."""
    copy = state_dir / INVENTORY_LAST_GOOD
    recorded = _read_settings(copy)
    if (
        recorded is not None
        and recorded.get("source") == str(source)
        and recorded.get("source_sha256") == digest
        and copy.is_file()
    ):
        return False
    try:
        data = source.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            log.warning(
                "inventory source %s changed after it was imported: the last good copy is not updated",
                source,
                extra={"source": str(source)},
            )
            return False
        state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(copy, data)
        settings: dict[str, Any] = {
            "source": str(source),
            "source_sha256": digest,
            "imported_at": datetime.now(UTC).isoformat(),
        }
        if esmes is not None:
            settings["esmes"] = esmes
        _write_settings(copy, settings)
    except OSError as exc:
        log.warning(
            "the last good inventory could not be kept in %s: %s",
            copy,
            exc.strerror or exc,
            extra={"source": str(source), "error": str(exc)},
        )
        return False
    return True


def _last_good_inventory_record(source: str, copy: Path) -> tuple[dict[str, Any] | None, str]:
    """The record beside the last good inventory ``copy`` when that copy was taken from ``source``; else
    ``None`` and why not."""
    if not copy.is_file():
        return None, f"{copy} does not exist"
    recorded = _read_settings(copy)
    if recorded is None:
        return None, f"the source of {copy} is unknown ({_settings_path(copy).name} unreadable)"
    if recorded.get("source") != str(Path(source)):
        return None, f"{copy} was taken from another source ({recorded.get('source') or 'not recorded'})"
    return recorded, ""


def last_good_inventory_intact(source: str, state_dir: Path) -> tuple[int | None, str, str]:
    """Whether ``state_dir/inventory.last-good.csv`` may stand in for ``source`` (the checks of
    :func:`last_good_inventory`: taken from this very source path, bytes with the digest recorded beside
    it), judged from its record and its SHA-256 without importing it (what a configuration check needs:
    an import of a 1.4 M-row snapshot takes seconds, and serve imports it once more to start on it).
    Returns its number of ESMEs when recorded (else ``None``), why it may not stand in (``""``: it may)
    and when it was imported."""
    copy = state_dir / INVENTORY_LAST_GOOD
    recorded, why_not = _last_good_inventory_record(source, copy)
    if recorded is None:
        return None, why_not, ""
    try:
        with copy.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        return None, f"{copy} is unusable ({exc})", ""
    if digest != recorded.get("source_sha256"):
        return None, f"{copy} is not the snapshot {_settings_path(copy).name} describes", ""
    esmes = recorded.get("esmes")
    return (
        esmes if isinstance(esmes, int) else None,
        "",
        str(recorded.get("imported_at") or "(not recorded)"),
    )


def last_good_inventory(source: str, state_dir: Path) -> tuple[Inventory | None, str, str]:
    """The snapshot ``state_dir/inventory.last-good.csv`` holds, imported again, when it may stand in for
    ``source`` that cannot be imported: the last snapshot accepted from this very source file (path),
    with the digest recorded beside it (``.import``). Returns it (or ``None``), why it may not be used,
    and when it was imported (from the record)."""
    copy = state_dir / INVENTORY_LAST_GOOD
    recorded, why_not = _last_good_inventory_record(source, copy)
    if recorded is None:
        return None, why_not, ""
    try:
        inventory, report = import_inventory_csv(copy)
    except (DuisgwError, OSError) as exc:
        return None, f"{copy} is unusable ({exc})", ""
    if report.source_sha256 != recorded.get("source_sha256"):
        return None, f"{copy} is not the snapshot {_settings_path(copy).name} describes", ""
    return inventory, "", str(recorded.get("imported_at") or "(not recorded)")


def _log_unexpected(what: str, exc: Exception) -> None:
    """``what`` failed with an error nobody expected: logged at ERROR with its traceback (called in the
    ``except`` block), the error's type and text in the line and in its ``error`` field."""
    error = f"{type(exc).__name__}: {exc}"
    log.exception("%s failed unexpectedly: %s", what, error, extra={"error": error})


@dataclass
class Gateway:
    """The pipeline's long-lived parts (shared by the processor, the reload and the admin endpoints)."""

    config: ServiceConfig
    engine_config: EngineConfig
    classifier: Classifier
    guids: GuidRegistry
    inventory: InventoryRegistry
    state_dir: Path
    #: what each classify worker process builds (``[pipeline] classify_processes``)
    classifier_spec: ClassifierSpec | None = None
    processor: GatewayProcessor | None = None
    #: freeze the heap after start-up and reloads (:func:`serve` sets it: ``gc`` state is process-wide)
    freeze_heap: bool = False
    #: reference data in force that is the last good one because its source could not be imported at
    #: start-up or by a reload ("guids", "inventory" → why) or a reload's was refused ("smki", "gbcs_keys" →
    #: why); the next reload that takes it clears it (``duisgw_reference_stale``)
    stale: dict[str, str] = field(default_factory=dict)
    #: the bytes of the SMKI store in force (its digest names the generation; replaced by a reload)
    smki: SmkiMaterial | None = None
    #: 1 at start-up, +1 for each reload that swapped in another SMKI store
    smki_generation: int = 1
    #: 1 at start-up, +1 for each reload that swapped in another GBCS key store
    keys_generation: int = 1
    #: the service running this gateway (its ingress workers reload the SMKI store too); set by make_service
    service: Service | None = None
    #: see :data:`KEY_HEAL_INTERVAL`
    key_heal_interval: float = KEY_HEAL_INTERVAL
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: the reload requested (POST /admin/reload, SIGHUP) that waits for the lock: later requests join it
    _queued_reload: asyncio.Future[dict[str, Any]] | None = None
    # the rebuild of a corrupt key index (key_index_corrupt): the event loop it runs on, the task (at most
    # one), whether another finding came while it ran, and when the last one started (monotonic)
    _loop: asyncio.AbstractEventLoop | None = None
    _heal: asyncio.Task[None] | None = None
    _heal_again: bool = False
    _healed_at: float | None = None

    @property
    def engine_db(self) -> Path:
        """The database file that holds the decision state (see :func:`engine_db_path`)."""
        return engine_db_path(self.config)

    def _durable(self, transport: TransportStore) -> DurableEngine | SharedEngine:
        """In the transport store's thread: the engine on its store, which with ``state_in_store`` (SQLite
        backend) is the transport store's own connection, else ``state_dir/engine.sqlite3``. Refuses to
        start when the decision state is in the other place (held messages and evidence would be lost)."""
        sync = cast(Literal["FULL", "NORMAL"], self.config.pipeline.synchronous)
        conn = transport.thread_connection()
        separate = self.state_dir / ENGINE_DB
        if _in_store(self.config):
            if _has_messages(separate):
                raise StoreError(
                    f"decision state found in {separate}, but [pipeline] state_in_store = true keeps it in "
                    f"{transport.path}: set state_in_store = false to go on using that file"
                )
            store = EngineStore(transport.path, synchronous=sync, connection=conn, files=transport.files)
        else:
            if _table_has_rows(conn, "messages") and "decisions" in _tables(conn):
                raise StoreError(
                    f"decision state found in {transport.path}, but [pipeline] state_in_store = false keeps "
                    f"it in {separate}: set state_in_store = true to go on using that file"
                )
            store = EngineStore(separate, synchronous=sync, busy_timeout=self.config.store.busy_timeout)
        st = self.config.state
        if st.backend == "redis":  # engine state shared by every instance; messages and audit stay here
            try:
                redis_config = RedisStateConfig(
                    url=st.redis_url,
                    prefix=st.key_prefix,
                    instance=st.instance,
                    lease=st.lease,
                    decision_log=st.decision_log,
                    max_retries=st.max_retries,
                    replicas=st.replicas,
                    wait_timeout=st.wait_timeout,
                    export_days=st.export_days,
                    # clock = "wall": no host clock ahead of Redis time moves the shared clock;
                    # clock = "message": the gateway clock is the messages' time, not a host's
                    max_clock_ahead=MAX_CLOCK_AHEAD if self.config.clock == "wall" else None,
                )
                return SharedEngine(store, redis_config, self.engine_config, self.guids, self.inventory)
            except BaseException:
                store.close()
                raise
        return DurableEngine(store, self.engine_config, self.guids, self.inventory)

    async def processor_factory(self, ctx: ServiceContext) -> Processor:
        """A :data:`~gateway.service.app.ProcessorFactory` for :class:`Service`."""
        cfg = ctx.config
        self._loop = asyncio.get_running_loop()
        proc = GatewayProcessor(
            classifier=self.classifier,
            durable_factory=functools.partial(self._durable, ctx.store),
            store=ctx.store,
            outbox=ctx.outbox,
            rejects=ctx.rejects,
            metrics=ctx.metrics,
            destinations=[d.name for d in cfg.destinations],
            clock=cfg.clock,
            classify_threads=cfg.pipeline.classify_threads,
            classify_processes=cfg.pipeline.classify_processes,
            classifier_spec=self.classifier_spec,
            max_batch=cfg.pipeline.max_batch,
            log_forwards=cfg.pipeline.log_forwards,
            arrival_max_skew=timedelta(seconds=cfg.arrival_max_skew),
            arrival_max_delay=timedelta(seconds=cfg.arrival_max_delay),
            on_key_index_corrupt=self.key_index_corrupt,
            observations_retention=_retention(cfg.store.observations_retention_seconds),
            rejects_retention=_retention(cfg.store.rejects_retention_seconds),
        )
        await proc.start()
        self.processor = proc
        if self.freeze_heap:
            settle_heap()
        return proc

    # ------------------------------------------------------------------ reload

    async def reload_joined(self) -> dict[str, Any]:
        """:meth:`reload` for a request (``POST /admin/reload``, SIGHUP): one that comes while a reload it
        could join has not begun yet (it waits for the one running) joins it instead of queueing a whole
        reload of its own — that one reads every source after this request came, so its report answers it
        too. A storm of N requests runs at most the reload in hand and one more, not N."""
        queued = self._queued_reload
        if queued is None:

            def begun() -> None:
                self._queued_reload = None

            queued = self._queued_reload = asyncio.ensure_future(self.reload(on_begun=begun))

            def done(f: asyncio.Future[dict[str, Any]]) -> None:
                if self._queued_reload is f:  # (cancelled before it began: no later request joins it)
                    self._queued_reload = None
                if not f.cancelled():
                    f.exception()  # (a failure reaches every request joined; retrieved so none is "never retrieved")

            queued.add_done_callback(done)
        return await asyncio.shield(queued)

    async def reload(self, *, on_begun: Callable[[], None] | None = None) -> dict[str, Any]:
        """Re-read the TLS material and the admin token (each section judged on its own), the SMKI
        certificates with their revocation lists, the GBCS device key store, the GUID list and the inventory
        snapshot, and swap in what is accepted (traffic keeps flowing). Each part is judged on its own: a
        refused one keeps what is in force, flagged stale (``duisgw_reference_stale``, ``stale`` in ``/admin/
        state``) until a reload takes it, and never keeps another part out. The report names every part's
        outcome, with ``status`` ``reloaded`` when all were taken, else ``refused`` (:func:`reload_outcome`);
        one log line says the same (:func:`reload_summary`)."""
        async with self._reload_lock:
            if on_begun is not None:
                on_begun()
            # the TLS material and the admin token first, each section on its own (logged as it goes): a
            # refused GUID list or inventory below must not keep a rotated certificate or a new CRL out
            transport = await self.service.reload_transport() if self.service is not None else {}
            pl = self.config.pipeline
            loop = asyncio.get_running_loop()
            # everything is read (and judged) before anything is swapped in
            guids_read = await loop.run_in_executor(
                None,
                _read_reference,
                "GUID list",
                functools.partial(
                    _load_guid_list,
                    pl.guids,
                    self.state_dir,
                    pl.guid_column,
                    pl.guid_sheets,
                    pl.max_rejected_fraction,
                ),
            )
            inventory_read = await loop.run_in_executor(
                None,
                _read_reference,
                "inventory",
                functools.partial(_load_inventory, pl.inventory, pl.max_rejected_fraction, self.state_dir),
            )
            candidate = await loop.run_in_executor(
                None, _prepare_smki, pl.certificates, pl.crl_dir, self.classifier.certificates, self.smki
            )
            keys = await loop.run_in_executor(
                None,
                _prepare_keys,
                pl.gbcs_keys,
                self.state_dir / GBCS_KEYS_INDEX,
                self.classifier.gbcs.keystore,
            )
            guids_report = self._take_guids(*guids_read)
            inventory_report = await self._take_inventory(*inventory_read)
            smki_report, keys_report = await self._reload_classifier(candidate, keys)
            if self.freeze_heap:
                settle_heap()
            report = reload_outcome(
                {
                    **transport,
                    "smki": smki_report,
                    "gbcs_keys": keys_report,
                    "guids": guids_report,
                    "inventory": inventory_report,
                }
            )
            if keys_report["status"] == "reloaded" and self.service is not None:
                self.service.metrics.gbcs_key_index_rebuilds.labels("reload").inc()
            level, message = reload_summary(report, "reference data")
            log.log(level, "%s", message, extra={"report": json.dumps(report, sort_keys=True)})
            return report

    def _refused_part(
        self, part: str, what: str, held: str, refused: str | None, count: int, generation: int
    ) -> dict[str, Any]:
        """A refused GUID list or inventory (``part``) in a reload: the data in force is kept and flagged
        stale until a reload imports the source (logged at ERROR); its part of the report."""
        reason = refused or "not read"
        self.stale[part] = reason
        log.error(
            "%s reload refused; the %s in force stays (duisgw_reference_stale{source=%s} = 1): %s",
            what,
            held,
            f'"{part}"',
            reason,
            extra={"source": getattr(self.config.pipeline, part), "error": reason},
        )
        return {"status": "refused", "refused": reason, "count": count, "generation": generation}

    def _imported_again(self, part: str, what: str, held: str) -> None:
        """A reload imported ``part``'s source: a last good form in force (stale) no longer is."""
        if (stale := self.stale.pop(part, None)) is not None:
            log.info(
                "%s imported again: the last good %s is no longer in force", what, held, extra={"was": stale}
            )

    def _take_guids(
        self, read: tuple[GuidSet, str, dict[str, Any]] | None, refused: str | None
    ) -> dict[str, Any]:
        """The GUID list part of a reload: the list read swapped in, or (refused) the list in force kept and
        flagged stale until a reload imports the source."""
        if read is None:
            return self._refused_part(
                "guids", "GUID list", "list", refused, len(self.guids), self.guids.generation
            )
        guids, how, found = read
        self.guids.replace(guids)
        self._imported_again("guids", "GUID list", "list")
        return {
            "status": "reloaded",
            "count": len(guids),
            "source": how,
            "generation": self.guids.generation,
            **({"import": found} if found else {}),
        }

    async def _take_inventory(
        self, read: tuple[Inventory, dict[str, Any]] | None, refused: str | None
    ) -> dict[str, Any]:
        """The inventory part of a reload, as :meth:`_take_guids` (links learned from traffic are re-applied on
        top of a new snapshot: in a worker thread, never on the event loop, which would stop answering the
        ingress, the probes and the outbox for as long as the merge takes, seconds with many links learned)."""
        if read is None:
            return self._refused_part(
                "inventory", "inventory", "snapshot", refused, len(self.inventory), self.inventory.generation
            )
        inventory, found = read
        merge = await asyncio.get_running_loop().run_in_executor(None, self.inventory.reload, inventory)
        self._imported_again("inventory", "inventory", "snapshot")
        return {
            "status": "reloaded",
            "count": len(inventory),
            "generation": self.inventory.generation,
            **merge.as_dict(),
            **({"import": found} if found else {}),
        }

    async def _reload_classifier(
        self, smki: _SmkiCandidate | None, keys: KeyStoreReload
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Swap in the reloaded SMKI store and GBCS key store everywhere (the gateway process, then its
        workers), or keep the one in force of each that was refused (see the module docstring); the reports
        of both. ``smki`` None: the key store only (the SMKI store, and whether it is stale, untouched)."""
        smki_report = self._judge_smki(smki) if smki is not None else {}
        smki = smki if smki is not None else _SmkiCandidate()
        keys_report = self._judge_keys(keys)
        new_smki = smki.refused is None and smki.material is not None and smki.store is not None
        new_keys = keys.refused is None and keys.store is not None
        if not (new_smki or new_keys):
            return smki_report, keys_report
        classifier, spec = self.classifier, self.classifier_spec
        if smki.material is not None and smki.store is not None and new_smki:
            classifier = classifier.with_certificates(smki.store)
            spec = spec.with_smki(smki.material) if spec is not None else None
            self.smki = smki.material
        if keys.store is not None and new_keys:
            classifier = classifier.with_keystore(keys.store)
            spec = spec.with_keys(keys.store.ref()) if spec is not None else None
        self.classifier, self.classifier_spec = classifier, spec
        workers: dict[str, dict[str, int]] = {}
        counts = await self.processor.reload_classifier(classifier, spec) if self.processor else {}
        if counts:
            workers["classify"] = counts
        pool = self.service.ingress_pool if self.service is not None else None
        if pool is not None and spec is not None:
            workers["ingress"] = await pool.reload(spec)
        # the generations /admin/state shows move once every process has the new store, so that whoever
        # waits for them (after a SIGHUP) knows the workers classify with it too
        if smki.material is not None and smki.store is not None and new_smki:
            self.smki_generation += 1
        if keys.store is not None and new_keys:
            self.keys_generation += 1
        if new_smki:
            store = classifier.certificates
            report_certificate_store(store, datetime.now(UTC))
            if self.service is not None:
                watch_revocation_lists(self.service.metrics, store)
            smki_report = {**self._smki_state(store), "status": "reloaded", "workers": workers}
            log.info(
                "SMKI certificate store reloaded", extra={"report": json.dumps(smki_report, sort_keys=True)}
            )
        if new_keys:
            keys_report = {**self._keys_state(), "status": "reloaded", "workers": workers}
            _report_keystore(classifier.gbcs.keystore)
            log.info("GBCS key store reloaded", extra={"report": json.dumps(keys_report, sort_keys=True)})
        return smki_report, keys_report

    def _judge_smki(self, candidate: _SmkiCandidate) -> dict[str, Any]:
        """The SMKI part of a reload before anything is swapped: refused (the store in force stays, stale),
        unchanged, or to be swapped in (the report is completed then)."""
        store = self.classifier.certificates
        if candidate.refused is not None:
            self.stale["smki"] = candidate.refused
            log.error(
                "SMKI reload refused; the certificate store and revocation lists in force stay "
                '(duisgw_reference_stale{source="smki"} = 1): %s',
                candidate.refused,
                extra={"error": candidate.refused, "generation": self.smki_generation},
            )
            return {**self._smki_state(store), "status": "refused", "refused": candidate.refused}
        if (was := self.stale.pop("smki", None)) is not None:
            log.info(
                "SMKI material readable again: the store in force is no longer stale", extra={"was": was}
            )
        return {**self._smki_state(store), "status": "unchanged"}

    def _judge_keys(self, candidate: KeyStoreReload) -> dict[str, Any]:
        """The GBCS key store part of a reload, as :meth:`_judge_smki`."""
        if candidate.refused is not None:
            self.stale["gbcs_keys"] = candidate.refused
            log.error(
                "GBCS key store reload refused; the device certificates in force stay "
                '(duisgw_reference_stale{source="gbcs_keys"} = 1): %s',
                candidate.refused,
                extra={"error": candidate.refused, "generation": self.keys_generation},
            )
            return {**self._keys_state(), "status": "refused", "refused": candidate.refused}
        if (was := self.stale.pop("gbcs_keys", None)) is not None:
            log.info(
                "GBCS key folder readable again: the key store in force is no longer stale",
                extra={"was": was},
            )
        return {**self._keys_state(), "status": "unchanged"}

    def _keys_state(self) -> dict[str, Any]:
        keystore = self.classifier.gbcs.keystore
        digest = keystore.digest.hex()[:16] if isinstance(keystore, IndexedKeyStore) else ""
        size = len(keystore) if isinstance(keystore, IndexedKeyStore) else 0
        return {"generation": self.keys_generation, "digest": digest, "certificates": size}

    def _smki_state(self, store: CertificateStore) -> dict[str, Any]:
        return {
            "generation": self.smki_generation,
            "digest": self.smki.digest[:16] if self.smki is not None else "",
            "certificates": len(store),
            "revocation_lists": len(store.crls),
        }

    # ------------------------------------------------------------------ corrupt key index

    def key_index_corrupt(self) -> None:
        """A process (this one, a classify or an ingress worker) found the GBCS key index corrupt: rebuild it
        by itself (:meth:`rebuild_keys`), off the event loop's thread, at most one at a time and at most one
        start per :attr:`key_heal_interval` (findings in between wait for it, then make one rebuild). Called
        from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # (not serving: the next start rebuilds it)
        with contextlib.suppress(RuntimeError):  # the loop closing meanwhile
            loop.call_soon_threadsafe(self._heal_soon)

    def _heal_soon(self) -> None:
        if self._heal is not None and not self._heal.done():
            self._heal_again = True  # (perhaps about the index being rebuilt: one more, after the interval)
            return
        self._heal = asyncio.get_running_loop().create_task(self._heal_corrupt_index())

    async def _heal_corrupt_index(self) -> None:
        again = True
        while again:
            self._heal_again = False
            if self._healed_at is not None:
                await asyncio.sleep(max(0.0, self._healed_at + self.key_heal_interval - time.monotonic()))
            if self.service is not None and self.service.stopping:
                return
            self._healed_at = time.monotonic()
            try:
                await self.rebuild_keys()
            except Exception as exc:
                _log_unexpected("GBCS key index rebuild after corruption", exc)
            again = self._heal_again

    async def rebuild_keys(self) -> dict[str, Any]:
        """The GBCS key store part of :meth:`reload` alone (what a corrupt index found while running sets
        off): the folder listed again and the index rebuilt when the store in force was found corrupt or its
        index file was removed (by a worker that found it corrupt) or the folder changed, then swapped in
        here and in every worker process. A rebuild put in force is logged at WARNING and counted in
        ``duisgw_gbcs_key_index_rebuilds_total{trigger="corrupt"}``; a refused folder as by a reload."""
        async with self._reload_lock:
            keys = await asyncio.get_running_loop().run_in_executor(
                None,
                _prepare_keys,
                self.config.pipeline.gbcs_keys,
                self.state_dir / GBCS_KEYS_INDEX,
                self.classifier.gbcs.keystore,
            )
            _smki, report = await self._reload_classifier(None, keys)
            if report["status"] == "reloaded":
                if self.service is not None:
                    self.service.metrics.gbcs_key_index_rebuilds.labels("corrupt").inc()
                log.warning(
                    "GBCS key index rebuilt after it was found corrupt: device signatures verify again in "
                    'every process (duisgw_gbcs_key_index_rebuilds_total{trigger="corrupt"})',
                    extra={"report": json.dumps(report, sort_keys=True)},
                )
                if self.freeze_heap:
                    settle_heap()
            elif report["status"] == "unchanged":
                log.info(
                    "GBCS key index found corrupt, but the key store in force maps the index in force: "
                    "nothing to rebuild",
                    extra={"report": json.dumps(report, sort_keys=True)},
                )
            return report

    async def reload_logged(self) -> None:
        """SIGHUP handler body: reload (its log line names every part's outcome), an unexpected failure logged
        with its traceback, never lost in the task."""
        try:
            await self.reload_joined()
        except Exception as exc:
            _log_unexpected("reload", exc)

    # ------------------------------------------------------------------ admin

    def admin_routes(self, app: web.Application) -> None:
        app.router.add_post("/admin/reload", self._admin_reload)
        app.router.add_get("/admin/state", self._admin_state)
        app.router.add_post("/admin/tick", self._admin_tick)

    async def _admin_reload(self, _request: web.Request) -> web.Response:
        """The reload's report, every part in it: 200 when the GUID list and the inventory were taken, 422
        when either was refused (``status`` says whether every part was taken: see :meth:`reload`)."""
        try:
            report = await self.reload_joined()
        except Exception as exc:
            _log_unexpected("reload", exc)
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)
        refused = {"guids", "inventory"} & set(report["refused_parts"])
        return web.json_response(report, status=422 if refused else 200)

    async def _admin_state(self, _request: web.Request) -> web.Response:
        proc = self.processor
        durable = proc.durable if proc is not None else None
        clock = engine_clock(durable) if durable is not None else None
        return web.json_response(
            {
                "clock": clock.isoformat() if clock is not None else None,
                "clock_mode": self.config.clock,
                "state_backend": self.config.state.backend,
                "held": held_count(durable) if durable is not None else 0,
                "batches": proc.batches if proc is not None else 0,
                "guids": len(self.guids),
                "inventory": len(self.inventory),
                "stale": {**self.stale, **self._transport_stale()},
                "smki": self._smki_state(self.classifier.certificates),
                "gbcs_keys": self._keys_state(),
            }
        )

    def _transport_stale(self) -> dict[str, Any]:
        """The transport material kept because its reload was refused: ``tls`` by section, ``admin_token``."""
        refused = dict(self.service.transport_refused) if self.service is not None else {}
        out: dict[str, Any] = {}
        if (token := refused.pop("admin_token", None)) is not None:
            out["admin_token"] = token
        if refused:
            out["tls"] = refused
        return out

    async def _admin_tick(self, request: web.Request) -> web.Response:
        proc = self.processor
        if self.config.clock != "message":
            return web.json_response({"error": 'POST /admin/tick needs clock = "message"'}, status=409)
        if proc is None:
            return web.json_response({"error": "not started"}, status=503)
        try:
            data = await request.json()
            now = parse_arrival(str(data["now"]))
            # the engine clock never goes back: refuse what it cannot compute with, naming the tick's time
            proc.check_calendar(now, what='the tick\'s "now"')
        except BadArrivalHeader as exc:
            return web.json_response({"error": exc.message}, status=400)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f'expected {{"now": ISO-8601}}: {exc}'}, status=400)
        try:
            released = await proc.advance(now)
        except StoreUnavailable as exc:  # the release cannot be recorded now: nothing released, nothing moved
            log.error("admin tick failed: %s", exc, extra={"reason": exc.code})
            return web.json_response({"error": f"{exc.code}: {exc}"}, status=503, headers={"Retry-After": "5"})
        return web.json_response(
            {
                "released": [
                    {"message_id": d.message_id, "decision": d.disposition, "reason": str(d.reason)}
                    for d in released
                ]
            }
        )


@dataclass(frozen=True)
class _SmkiCandidate:
    """What a reload read of the SMKI store: a new one (material and store), the same bytes (both None),
    or why it is refused."""

    material: SmkiMaterial | None = None
    store: CertificateStore | None = None
    refused: str | None = None


def _prepare_smki(
    certificates: str, crl_dir: str, current: CertificateStore, in_force: SmkiMaterial | None
) -> _SmkiCandidate:
    """In a worker thread: read the SMKI material, build its store and judge it against the one in force."""
    try:
        material = SmkiMaterial.read(certificates, crls=(Path(crl_dir),) if crl_dir else ())
        if in_force is not None and material.digest == in_force.digest:
            return _SmkiCandidate()
        store = material.build()
    except (SmkiError, OSError) as exc:
        return _SmkiCandidate(refused=str(exc))
    except Exception as exc:  # not a named error: refused all the same, never half-applied
        log.exception("SMKI material could not be built")
        return _SmkiCandidate(refused=f"{type(exc).__name__}: {exc}")
    problem = replacement_problem(current, store)
    if problem is not None:
        return _SmkiCandidate(refused=problem)
    return _SmkiCandidate(material, store)


def _prepare_keys(path: str, index: Path, current: object) -> KeyStoreReload:
    """In a worker thread: read the GBCS key folder again and judge it against the key store in force
    (:func:`gateway.gbcs_keys.reload_keystore`); an index that cannot be written refuses it."""
    try:
        return reload_keystore(path, index=index, current=current)
    except OSError as exc:
        return KeyStoreReload(refused=f"GBCS key index {index} cannot be written: {exc.strerror or exc}")
    except Exception as exc:  # not a named error: refused all the same, never half-applied
        log.exception("GBCS key store could not be reloaded")
        return KeyStoreReload(refused=f"{type(exc).__name__}: {exc}")


def _read_reference(what: str, load: Callable[[], _T]) -> tuple[_T | None, str | None]:
    """In a worker thread: a reference source read for a reload (``load``), or why it is refused. A named
    error (an import's own checks, an unreadable file) is the reason; another is refused all the same and
    logged with its traceback (an importer bug never half-applies a reload)."""
    try:
        return load(), None
    except (DuisgwError, OSError) as exc:
        return None, str(exc)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.exception("%s could not be read: %s", what, reason, extra={"error": reason})
        return None, reason


def _report_keystore(keystore: object) -> None:
    """Log what a (re)loaded GBCS key store could not use (a warning per file, as the walk does for links)."""
    skipped = getattr(keystore, "skipped", [])
    for name, why in skipped[:50]:
        log.warning("GBCS key file skipped: %s", why, extra={"file": name, "reason": why})
    if len(skipped) > 50:
        log.warning("GBCS key files skipped: %d more not listed", len(skipped) - 50)


def settle_heap() -> None:
    """One full collection, then move every surviving object out of the collector's scans."""
    gc.collect()
    gc.freeze()


def build_gateway(cfg: ServiceConfig) -> Gateway:
    """Load certificates, keys, the GUID list and the inventory (paths already resolved)."""
    pl = cfg.pipeline
    engine_config = EngineConfig.from_mapping(cfg.engine)
    state_dir = Path(pl.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    crls = (Path(pl.crl_dir),) if pl.crl_dir else ()
    smki = SmkiMaterial.read(pl.certificates, crls=crls)  # read once: every process builds from these bytes
    certs = smki.build()
    report_certificate_store(certs, datetime.now(UTC))
    keys_index = state_dir / GBCS_KEYS_INDEX
    keystore = load_keystore(pl.gbcs_keys, index=keys_index)
    log.info("GBCS key store ready", extra={"certificates": len(keystore), "index": str(keys_index)})
    policy = SigningPolicy(trust_expired=parse_trust_expired(pl.trust_expired))
    for bare in sorted(e for e in policy.trust_expired if isinstance(e, int)):
        log.warning(
            "[pipeline] trust_expired names a serial without its issuer: an expired certificate with this "
            "serial from any CA is trusted (write ISSUER#SERIAL)",
            extra={"serial": str(bare)},
        )
    classifier = Classifier(
        certificates=certs,
        signing_policy=policy,
        gbcs_verifier=Verifier(keystore, acb_eui=getattr(keystore, "acb_eui", None), revocation=certs),
        max_bytes=cfg.server.max_body_bytes,
        tolerate_whitespace=pl.tolerate_whitespace,
        schema=load_schema(pl.schema) if pl.schema else None,
    )
    spec = ClassifierSpec(  # the same classifier, built again in each classify worker process
        certs=Path(pl.certificates),
        gbcs_keys=Path(pl.gbcs_keys),
        trust_expired=policy.trust_expired,
        tolerate_whitespace=pl.tolerate_whitespace,
        schema=Path(pl.schema) if pl.schema else None,
        max_bytes=cfg.server.max_body_bytes,
        keys_index=keys_index,
        crls=crls,
        smki=smki,
        keys=keystore.ref(),  # the workers map the index built here: the same key store generation
    )
    guids, how, stale = _start_guid_list(cfg, state_dir)
    log.info("GUID list ready", extra={"count": len(guids), "source": how})
    inventory, inventory_stale = _start_inventory(cfg, state_dir)
    stale_now = {"guids": stale} if stale is not None else {}
    if inventory_stale is not None:
        stale_now["inventory"] = inventory_stale
    return Gateway(
        cfg,
        engine_config,
        classifier,
        GuidRegistry(guids),
        InventoryRegistry(inventory),
        state_dir,
        classifier_spec=spec,
        stale=stale_now,
        smki=smki,
    )


def report_certificate_store(certs: CertificateStore, now: datetime) -> None:
    """Log what the SMKI store could not use (a refused revocation list at ERROR: it revokes nothing) and
    each issuer whose freshest revocation list is already past its nextUpdate (WARNING: signatures by its
    certificates are not evidence, fail-closed)."""
    for label, err in certs.rejected:
        if isinstance(err, UnusableCrl):
            log.error(
                "SMKI revocation list refused: it revokes nothing (%s)",
                err,
                extra={"file": label, "error": str(err)},
            )
        else:
            log.warning("SMKI certificate file skipped: %s", err, extra={"file": label, "error": str(err)})
    lists = certs.crls
    if lists:
        log.info(
            "SMKI revocation lists ready",
            extra={"lists": len(lists), "issuers": len(certs.crl_next_updates())},
        )
    for issuer, next_update in sorted(certs.crl_next_updates().items()):
        if next_update is not None and now > next_update:
            log.warning(
                "SMKI revocation list of %s is past its nextUpdate (or the expiry of the CA certificate that "
                "signed it) %s: signatures by its certificates are not evidence until a fresh list is loaded",
                issuer,
                next_update.isoformat(),
                extra={"issuer": issuer, "next_update": next_update.isoformat()},
            )


def _start_failure(exc: Exception) -> str:
    """Why a reference source could not be imported at start-up, as the log, the error and ``/admin/state``
    say it: a missing file by its path, as ``config check`` names it."""
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        return f"file not found: {exc.filename}"
    if isinstance(exc, (DuisgwError, OSError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _start_guid_list(cfg: ServiceConfig, state_dir: Path) -> tuple[GuidSet, str, str | None]:
    """The GUID list to start with, how it was had, and why it is stale (``None`` when it is not).

    A source that cannot be imported leaves the last good list in force, as on reload, when
    ``guids.bin`` may stand in for it (:func:`last_good_guid_list`): an inline gateway that refused to
    start would stop every DNO's traffic. Without one the start-up fails (``serve`` exits 2)."""
    pl = cfg.pipeline
    try:
        guids, how = load_guid_list(
            pl.guids, state_dir, pl.guid_column, pl.guid_sheets, pl.max_rejected_fraction
        )
    except Exception as exc:
        named = isinstance(exc, (DuisgwError, OSError))
        reason = _start_failure(exc)
        last, why_not = last_good_guid_list(pl.guids, state_dir, pl.guid_column, pl.guid_sheets)
        if last is None:
            if not named:  # as before: the traceback shows where the importer failed
                log.error("no last good GUID list to start with: %s", why_not)
                raise
            message = exc.message if isinstance(exc, DuisgwError) else reason
            raise GuidImportError(f"{message}; no last good GUID list to start with: {why_not}") from exc
        meta = cast(GuidMeta, last.meta)  # last_good_guid_list checked it
        log.error(
            "GUID list source %s could not be imported (%s); starting with the last good list imported from "
            'it: %d EUIs, imported %s, until a reload succeeds (duisgw_reference_stale{source="guids"} = 1)',
            pl.guids,
            reason,
            len(last),
            meta.imported_at.isoformat(),
            exc_info=not named,
            extra={"source": pl.guids, "error": reason, "imported_at": meta.imported_at.isoformat()},
        )
        return last, "last-good", reason
    return guids, how, None


def _start_inventory(cfg: ServiceConfig, state_dir: Path) -> tuple[Inventory, str | None]:
    """The inventory snapshot to start with, and why it is stale (``None`` when it is not): as for the
    GUID list (:func:`_start_guid_list`), a source that cannot be imported leaves the last good snapshot
    of it in force (:func:`last_good_inventory`); without one the start-up fails (``serve`` exits 2)."""
    pl = cfg.pipeline
    try:
        inventory, _found = _load_inventory(pl.inventory, pl.max_rejected_fraction, state_dir)
    except Exception as exc:
        named = isinstance(exc, (DuisgwError, OSError))
        reason = _start_failure(exc)
        last, why_not, imported_at = last_good_inventory(pl.inventory, state_dir)
        if last is None:
            if not named:  # the traceback shows where the importer failed
                log.error("no last good inventory to start with: %s", why_not)
                raise
            message = exc.message if isinstance(exc, DuisgwError) else reason
            raise InventoryImportError(f"{message}; no last good inventory to start with: {why_not}") from exc
        log.error(
            "inventory source %s could not be imported (%s); starting with the last good snapshot imported "
            'from it: %d ESMEs, imported %s, until a reload succeeds (duisgw_reference_stale{source="inventory"} '
            "= 1)",
            pl.inventory,
            reason,
            len(last),
            imported_at,
            exc_info=not named,
            extra={"source": pl.inventory, "error": reason, "imported_at": imported_at},
        )
        return last, reason
    return inventory, None


def make_service(gateway: Gateway, *, base_dir: Path | None = None) -> Service:
    """The :class:`Service` running ``gateway``'s pipeline (not started)."""
    cfg = gateway.config
    middlewares: Sequence[Any] = (arrival_middleware,) if cfg.clock == "message" else ()
    service = Service(
        cfg,
        gateway.processor_factory,
        base_dir=base_dir,
        middlewares=middlewares,
        admin_routes=gateway.admin_routes,
        classifier_spec=gateway.classifier_spec,
    )
    stale = gateway.stale
    service.metrics.reference_stale.labels("guids").set_function(lambda: float("guids" in stale))
    service.metrics.reference_stale.labels("inventory").set_function(lambda: float("inventory" in stale))
    service.metrics.reference_stale.labels("smki").set_function(lambda: float("smki" in stale))
    service.metrics.reference_stale.labels("gbcs_keys").set_function(lambda: float("gbcs_keys" in stale))
    watch_revocation_lists(service.metrics, gateway.classifier.certificates)
    gateway.service = service
    return service


def _past(deadline: float) -> float:
    return float(time.time() > deadline)


def watch_revocation_lists(metrics: Metrics, certs: CertificateStore) -> None:
    """Export the store's revocation lists (the store in force: called again by each reload that swaps one
    in): refused ones, and per issuer the freshest nextUpdate and whether it has passed (on the wall clock,
    at each scrape). Issuers no longer in the store lose their samples."""
    metrics.crl_stale.clear()
    metrics.crl_next_update.clear()
    metrics.crls_refused.set(sum(isinstance(err, UnusableCrl) for _label, err in certs.rejected))
    for issuer, next_update in certs.crl_next_updates().items():
        if next_update is None:
            metrics.crl_stale.labels(issuer).set(0)
            continue
        metrics.crl_next_update.labels(issuer).set(next_update.timestamp())
        metrics.crl_stale.labels(issuer).set_function(functools.partial(_past, next_update.timestamp()))


class _StartUpSignals:
    """SIGTERM/SIGINT set ``stop``; SIGHUP is noted (``hup``): the handlers in force from the start of ``serve``
    until the service's own replace them (``add_signal_handler`` overwrites a handler: none is removed in
    between, when the default action would be back for a moment)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        self.loop = loop
        self.hup = False
        self.installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            callback = self._on_hup if sig is signal.SIGHUP else stop.set
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, callback)
                self.installed.append(sig)

    def _on_hup(self) -> None:
        self.hup = True

    def remove(self) -> None:
        for sig in self.installed:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self.loop.remove_signal_handler(sig)
        self.installed = []


def _start_up_signals(stop: asyncio.Event) -> _StartUpSignals:
    return _StartUpSignals(asyncio.get_running_loop(), stop)


def _track(tasks: set[asyncio.Task[Any]], task: asyncio.Task[Any]) -> None:
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _reload_once_serving(service: Service, reload: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Run ``reload`` (a SIGHUP that came while the reference data was read) once ``service`` listens; not at
    all when it stops first."""
    while not service.listening:
        if service.stopping:
            return
        await asyncio.sleep(0.05)
    await reload()


@contextlib.contextmanager
def _on_sighup(reload: Callable[[], Coroutine[Any, Any, Any]]) -> Iterator[set[asyncio.Task[Any]]]:
    """SIGHUP runs ``reload`` in a task (when the loop can take signal handlers) while inside."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        task: asyncio.Task[Any] = asyncio.create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    installed = False
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        installed = True
    try:
        yield tasks
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGHUP)


async def serve(
    cfg: ServiceConfig, *, base_dir: Path | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run the gateway until SIGTERM/SIGINT (or ``stop``); SIGHUP reloads the TLS material, the admin token
    and (pipeline mode) the reference data."""
    configure_logging(cfg.logging)
    stop = stop if stop is not None else asyncio.Event()
    # Until the service's own handlers take over (serve_forever, _on_sighup replace these), a signal must not
    # keep its default action: the reference data takes seconds to read (~13 s for a 1.4 M-row inventory), and
    # SIGTERM then killed the process (never exit 0) and SIGHUP (a reload) killed the gateway outright.
    early = _start_up_signals(stop)
    if cfg.mode == "passthrough":  # SIGHUP (and POST /admin/reload) reload the TLS material and admin token
        service = Service(cfg, PassThroughProcessor.create, base_dir=base_dir)
        with _on_sighup(service.reload_transport_logged) as tasks:
            try:
                await service.serve_forever(stop)
            finally:
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
        return
    gateway = await asyncio.get_running_loop().run_in_executor(None, build_gateway, cfg)
    if stop.is_set():
        log.info("stop requested while the reference data was being read: not starting")
        early.remove()
        return
    gateway.freeze_heap = True
    service = make_service(gateway, base_dir=base_dir)
    unwatch_gc = service.metrics.watch_gc()
    try:
        with _on_sighup(gateway.reload_logged) as tasks:
            if early.hup:  # the files it replaced may have been read before it came: reload once serving
                log.info("SIGHUP while the reference data was read: reloading once the gateway serves")
                _track(tasks, asyncio.create_task(_reload_once_serving(service, gateway.reload_logged)))
            try:
                await service.serve_forever(stop)
            finally:
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        unwatch_gc()
        gc.unfreeze()
