"""``duisgw decode FILE|-``: decode one DUIS message — or a GBCS frame given as hex, base64 or binary —
and print it as JSON (or ``--text``).

Exit 0 when decoded, 2 when the input is unreadable or not decodable (one-line reason on stderr). GBCS
payloads inside DUIS are rendered by :func:`payload_json` with :func:`gbcs.render.describe`; ``--keys DIR``
verifies device signatures and MACs (certificates checked at the DUIS ResponseDateTime, or ``--at``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.duis.decode import decode
from gateway.duis.errors import DuisError, OversizeBody
from gateway.duis.model import (
    EUI_FIELDS,
    DCCAlertMessage,
    DeviceAlertMessage,
    DSPInventory,
    FutureDatedDeviceAlertMessage,
    PowerOutageEvent,
    RawBody,
    Request,
    Response,
    ResponseMessage,
)
from gateway.duis.safexml import DEFAULT_MAX_BYTES
from gateway.duis.values import DateTimePolicy, MessageId, format_datetime
from gateway.errors import DuisgwError
from gateway.gbcs_keys import load_keystore
from gateway.mpan import check_char_of, mpan_check_fails, mpan_core_valid
from gbcs.errors import GbcsError
from gbcs.eui import format_eui
from gbcs.frame import parse_frame
from gbcs.keystore import KeyStore
from gbcs.render import describe, looks_like_gbcs, to_text

__all__ = ["model_json", "payload_json", "read_input", "register", "render_text"]

_PAYLOAD_FIELDS = frozenset({"gbcs_payload"})
_LARGE_BYTES_FIELDS = frozenset({"firmware_image"})


@dataclasses.dataclass(frozen=True)
class GbcsContext:
    """How GBCS payloads are rendered: the key store to verify them with and the checking time."""

    keystore: KeyStore | None = None
    at: datetime | None = None


_NO_KEYS = GbcsContext()


def payload_json(payload: bytes, ctx: GbcsContext = _NO_KEYS) -> dict[str, Any]:
    """The JSON rendering of one GBCS payload: the decoded frame and payload (``gbcs.render.describe``),
    with signature/MAC results when a key store is given, and the raw hex."""
    out: dict[str, Any] = {"hex": payload.hex().upper(), "octets": len(payload)}
    try:
        out["gbcs"] = describe(payload, ctx.keystore, at=ctx.at)
    except GbcsError as exc:
        out["gbcs_error"] = {"code": exc.code, "detail": str(exc)}
    return out


def _value(name: str, value: Any, ctx: GbcsContext = _NO_KEYS) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return format_eui(value) if name in EUI_FIELDS else value
    if isinstance(value, bytes):
        if name in _PAYLOAD_FIELDS or name == "payload":
            return payload_json(value, ctx)
        if name in _LARGE_BYTES_FIELDS:
            return {"octets": len(value), "sha256": hashlib.sha256(value).hexdigest()}
        return value.hex().upper()
    if isinstance(value, MessageId):
        return str(value)
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, tuple):
        return [_value(name, v, ctx) for v in value]
    if isinstance(value, RawBody):
        return {"type": "RawBody", "name": value.name, "xml": value.xml.decode("utf-8", "replace")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"type": type(value).__name__}
        for f in dataclasses.fields(value):
            if f.name == "warnings":
                continue
            out[f.name] = _value(f.name, getattr(value, f.name), ctx)
        return out
    return repr(value)  # pragma: no cover - every model type is handled above


def model_json(doc: Request | Response, ctx: GbcsContext = _NO_KEYS) -> dict[str, Any]:
    """A JSON-ready dict: kind, identity, ids, codes, typed body (GBCS payloads decoded), warnings."""
    out: dict[str, Any] = {"kind": type(doc).__name__, "identity": doc.identity}
    if isinstance(doc, Response):
        out["body_kind"] = doc.kind
    else:
        out["body_kind"] = doc.body_kind
    out["schema_version"] = str(doc.schema_version)
    out["header"] = _value("header", doc.header, ctx)
    out["body"] = _value("body", doc.body, ctx)
    out["warnings"] = list(doc.warnings) + _mpan_check_warnings(doc) + _alert_code_warnings(doc)
    return out


def _alert_code_warnings(doc: Request | Response) -> list[str]:
    """A DUIS alert code (DeviceAlertMessage ``AlertCode``, FutureDatedDeviceAlertMessage
    ``FutureDatedAlertCode``) that is not the alert code of the GBCS alert it carries: the pipeline
    reports the same disagreement as ``gbcs-mismatch``. Compared as octets (hexBinary: ``8f66`` is
    8F66); a payload that is no GBCS alert is left to the payload's own rendering."""
    body = doc.body
    carrier: DeviceAlertMessage | FutureDatedDeviceAlertMessage
    if isinstance(body, DeviceAlertMessage):
        carrier, name = body, "AlertCode"
    elif isinstance(body, ResponseMessage) and isinstance(body.payload, FutureDatedDeviceAlertMessage):
        carrier, name = body.payload, "FutureDatedAlertCode"
    else:
        return []
    try:
        gbcs_code = parse_frame(carrier.gbcs_payload).alert_code
    except GbcsError:
        return []
    if gbcs_code is None or not carrier.alert_code:
        return []
    duis_code = int.from_bytes(carrier.alert_code, "big")
    if duis_code == gbcs_code:
        return []
    return [f"{name} {carrier.alert_code.hex().upper()} but the GBCS alert is {gbcs_code:04X}"]


def _mpan_check_warnings(doc: Request | Response) -> list[str]:
    """The MPAN check digit of an AD1's 13-digit MPxN, reported here for the reader: the decoder checks
    only the MPxN's form (its model warning), while the engine and the inventory import judge the check
    digit where it matters (an MPxN that fails it joins no meter; gateway.mpan). In an 8.2 response, the
    ImportMPxN of each ESME that is no MPAN core (not 13 digits, or a wrong check digit): the engine does
    not learn it. Other devices' MPxNs (a gas meter's MPRN) are not MPANs and are not judged."""
    body = doc.body
    if isinstance(body, DCCAlertMessage) and isinstance(body.alert, PowerOutageEvent):
        mpxn = body.alert.mpxn
        if mpan_check_fails(mpxn):
            return [f"PowerOutageEvent MPxN {mpxn!r} fails the MPAN check digit (expected {check_char_of(mpxn)}, "
                    f"not {mpxn[12]})"]  # fmt: skip
    elif isinstance(body, ResponseMessage) and isinstance(body.payload, DSPInventory):
        out = []
        for d in body.payload.devices:
            raw = d.import_mpxn
            if d.device_type != "ESME" or raw is None or not raw.strip():
                continue
            mpxn = raw.replace(" ", "").strip()  # as the engine and the inventory compare it
            if mpan_core_valid(mpxn):
                continue
            why = (
                f"fails the MPAN check digit (expected {check_char_of(mpxn)}, not {mpxn[12]})"
                if mpan_check_fails(mpxn)
                else "is not a 13-digit MPAN"
            )
            out.append(f"ESME {format_eui(d.device_id)} ImportMPxN {raw!r} {why}: not learned")
        return out
    return []


def render_text(obj: Any, indent: int = 0) -> list[str]:
    """An indented, readable tree of a :func:`model_json` value."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(obj, dict):
        for key, val in obj.items():
            if key == "type":
                continue
            if isinstance(val, dict | list) and val:
                label = f" ({val['type']})" if isinstance(val, dict) and "type" in val else ""
                lines.append(f"{pad}{key}:{label}")
                lines.extend(render_text(val, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(val)}")
    elif isinstance(obj, list):
        for i, val in enumerate(obj):
            if isinstance(val, dict | list):
                label = f" ({val['type']})" if isinstance(val, dict) and "type" in val else ""
                lines.append(f"{pad}- [{i}]{label}")
                lines.extend(render_text(val, indent + 1))
            else:
                lines.append(f"{pad}- {_scalar(val)}")
    else:
        lines.append(f"{pad}{_scalar(obj)}")
    return lines


def _scalar(val: Any) -> str:
    if val is None:
        return "-"
    if isinstance(val, dict | list):
        return "(none)"
    return str(val)


def read_input(name: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read FILE or ``-`` (stdin) as bytes, at most ``max_bytes`` of them.

    Only ``max_bytes + 1`` bytes are ever read, so an endless input (``/dev/zero``, a pipe that
    never ends) costs no more memory than the cap: one more byte than allowed is
    :class:`OversizeBody`. Raises OSError (with a readable reason) when the input cannot be read.
    """
    limit = max(max_bytes, 0) + 1
    if name == "-":
        data = sys.stdin.buffer.read(limit)
    else:
        with open(name, "rb") as f:
            data = f.read(limit)
    if len(data) > max_bytes:
        raise OversizeBody(f"{name} holds more than {max_bytes} bytes (the cap; see --max-bytes)")
    return data


def _run(args: argparse.Namespace) -> int:
    try:
        data = read_input(args.file, args.max_bytes)
    except OSError as exc:
        print(f"duisgw decode: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except DuisError as exc:
        print(f"duisgw decode: {exc}", file=sys.stderr)
        return 2
    keystore: KeyStore | None = None
    if args.keys is not None:
        try:
            keystore = load_keystore(args.keys)
        except (OSError, DuisgwError) as exc:
            print(f"duisgw decode: cannot load keys from {args.keys}: {exc}", file=sys.stderr)
            return 2
    at: datetime | None = None
    if args.at is not None:
        try:
            at = datetime.fromisoformat(args.at.replace("Z", "+00:00"))
        except ValueError:
            print(f"duisgw decode: bad --at time {args.at!r}", file=sys.stderr)
            return 2
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
    frame = None if data.lstrip()[:1] == b"<" else looks_like_gbcs(data)
    if frame is not None:  # hex, base64 or binary GBCS on its own
        try:
            rendered = describe(frame, keystore, at=at)
        except GbcsError as exc:
            print(f"duisgw decode: {exc.code}: {exc}", file=sys.stderr)
            return 2
        if args.text:
            sys.stdout.write(to_text(rendered))
        else:
            print(json.dumps(rendered, indent=2 if args.pretty else None, ensure_ascii=False))
        return 0
    policy = DateTimePolicy.REJECT_NAIVE if args.reject_naive else DateTimePolicy.NAIVE_IS_UTC
    try:
        doc = decode(data, max_bytes=args.max_bytes, policy=policy)
    except DuisError as exc:
        print(f"duisgw decode: {exc}", file=sys.stderr)
        return 2
    if at is None and isinstance(doc, Response):
        at = doc.header.response_datetime  # device certificates are checked at the DUIS message's own time
    rendered = model_json(doc, GbcsContext(keystore, at))
    if args.text:
        print("\n".join(render_text(rendered)))
    else:
        print(json.dumps(rendered, indent=2 if args.pretty else None, ensure_ascii=False))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "decode", help="decode a DUIS message (or hex/base64/binary GBCS) and print it as JSON"
    )
    p.add_argument(
        "file", metavar="FILE", help="DUIS XML or GBCS (hex, base64 or binary) file, or - for stdin"
    )
    p.add_argument("--text", action="store_true", help="print an indented readable tree instead of JSON")
    p.add_argument("--pretty", action="store_true", help="indent the JSON")
    p.add_argument(
        "--reject-naive",
        action="store_true",
        help="reject date-times without a time zone (default: UTC + warning)",
    )
    p.add_argument(
        "--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="size cap in bytes (default 1 MiB)"
    )
    p.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help="GBCS key store directory: verify device signatures, MACs, decrypt where keys allow",
    )
    p.add_argument(
        "--at",
        metavar="TIME",
        help="time certificates must be valid at (default: the DUIS ResponseDateTime; "
        "for bare GBCS, validity is not checked unless given)",
    )
    p.set_defaults(func=_run)
