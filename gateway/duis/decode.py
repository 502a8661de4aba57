"""DUIS decoder: bytes (or an already parsed lxml tree) in, typed model out.

Theory of operation: :func:`decode` parses with :func:`gateway.duis.safexml.parse_xml` (no
DOCTYPE, no entities, size cap) and hands the root to :func:`decode_tree`.

Processing instructions: the parser keeps them (C14N keeps them, signatures need them), and
``el.text`` stops at the first one, so ``…:1<?x?>001`` would read as ``…:1``. Every value must read
as its text nodes concatenated: when the bytes may hold a PI (:func:`gateway.duis.safexml.may_hold_pis`,
two ``memchr``-class finds) :func:`decode` drops the PIs from its own tree first, and
:func:`decode_tree` decodes a caller's tree that holds a PI (or a comment) from a copy without them
(the caller's tree may still be signature-verified). A document decodes exactly as it does with its
PIs removed (pinned by tests, including hypothesis-generated messages with a PI in every value).

The tree is walked
directly: each complex type is read by a small cursor (:class:`_Seq`) that takes the element
children in schema order and compares their ``tag`` with precomputed ``{namespace}Name`` strings.
There is no XPath and no schema validation on this path (schema validation is
:mod:`gateway.duis.schema`, run where policy asks for it). Namespaces are matched by URI, never
by prefix.

Fast paths (the hot messages: response headers, ResponseMessage with a GBCSPayload,
DCCAlertMessage with PowerOutageEvent, DeviceAlertMessage): when an element's children are exactly
one of the common layouts (checked by comparing every child's tag), the values are read straight
from that list; any other layout (a missing, extra, misnamed or misplaced element, or a PI in a
tree decoded with ``pis=False``) takes the checking walk, which gives the same model or explains
the error. The children come from one
``getchildren`` call (:data:`_children`, the same list as ``list(el)`` without the iterator). A
device response's ResponseID that is its RequestID swapped is not parsed twice
(:func:`gateway.duis.values.parse_id_pair`). Hot model objects are built with :func:`_builder`
(slot setters instead of the frozen ``__init__``). Tests pin each fast path against its checking
path, including every swap, duplicate, drop and rename of a child in the hot messages
(tests/duis/test_duis_fast_paths.py).

Errors are named (:mod:`gateway.duis.errors`): :class:`NotDuis` for a document that is not a DUIS
Request/Response, :class:`InvalidField` for a missing, misplaced or mis-typed field,
:class:`BadBase64` for a bad base64 value; parse errors come from ``safexml``. Cross-field
problems the XSD does not catch are *not* errors: they become ``warnings`` on the model.

A child the decoder does not interpret (another SR body, another ResponseMessage payload, another
DCC alert, a SMETS1 response) is kept as :class:`RawBody` with its exclusive-C14N bytes, provided
it is in the DUIS namespace (those choices hold nothing else): a child outside it is
:class:`InvalidField`, never a RawBody named like a DUIS element.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from lxml import etree

from gateway.duis.errors import InvalidField, NotDuis
from gateway.duis.model import (
    ActivateFirmware,
    AssociatedDevice,
    CommandFailure,
    CommsHubAlert,
    CommsHubFirmwareActivation,
    CSPFirmwareDeliveryStatus,
    DCCAlertBody,
    DCCAlertMessage,
    DeviceAlertMessage,
    DeviceStatusChangeEvent,
    DSPInventory,
    FirmwareDistributionFailure,
    FirmwareTransferAlert,
    FirmwareUpgradeRequested,
    FirmwareVersionMismatch,
    FutureDatedDeviceAlertMessage,
    InventoryDevice,
    MeterMPxNs,
    PowerOutageEvent,
    PPMIDAlert,
    PPMIDFirmwareUpgradeAlert,
    PreCommand,
    PropertyFilter,
    RawBody,
    ReadInventory,
    Request,
    RequestBody,
    RequestHeader,
    Response,
    ResponseBody,
    ResponseHeader,
    ResponseMessage,
    ResponsePayload,
    SignedPreCommand,
    SMETS1CHFirmwareNotification,
    UpdateFirmware,
)
from gateway.duis.safexml import DEFAULT_MAX_BYTES, may_hold_pis, parse_xml
from gateway.duis.values import (
    DEFAULT_POLICY,
    DS_NS,
    SR_NS,
    SRV_COMMAND_VARIANTS,
    DateTimePolicy,
    MessageId,
    check_service_reference,
    parse_base64,
    parse_bool,
    parse_date,
    parse_datetime,
    parse_dcc_utc,
    parse_eui_field,
    parse_eui_list,
    parse_hex,
    parse_id_pair,
    parse_int,
)

__all__ = ["decode", "decode_tree"]

_P = "{" + SR_NS + "}"
_SIGNATURE = "{" + DS_NS + "}Signature"
_NSLEN = len(_P)
_ELEMENTS_ONLY = etree.Element  # iterchildren(tag=etree.Element) skips comments and PIs


def _t(name: str) -> str:
    return _P + name


# Precomputed qualified tags (the decoder compares strings only).
T_REQUEST, T_RESPONSE, T_HEADER, T_BODY = _t("Request"), _t("Response"), _t("Header"), _t("Body")
T_REQUEST_ID, T_RESPONSE_ID = _t("RequestID"), _t("ResponseID")
T_FIRST, T_PRECEDING, T_CV = _t("FirstInSequence"), _t("PrecedingServiceRequestID"), _t("CommandVariant")
T_SR, T_SRV = _t("ServiceReference"), _t("ServiceReferenceVariant")
T_RESPONSE_CODE, T_RESPONSE_DT = _t("ResponseCode"), _t("ResponseDateTime")
T_EXEC_DT, T_FW_HASH, T_GBCS = _t("ExecutionDateTime"), _t("FirmwareHash"), _t("GBCSPayload")
T_GBCS_VERSION = _t("GBCSVersion")
T_MPXN, T_DEVICE_ID, T_UPRN, T_PROPERTY_FILTER = _t("MPxN"), _t("DeviceID"), _t("UPRN"), _t("PropertyFilter")
T_POST_CODE, T_ADDRESS_ID = _t("PostCode"), _t("AddressIdentifier")
T_FW_IMAGE, T_FW_VERSION, T_DEVICE_ID_LIST = _t("FirmwareImage"), _t("FirmwareVersion"), _t("DeviceIDList")
T_ALERT_CODE, T_THROTTLED_SEQ, T_THROTTLED_COUNT = (
    _t("AlertCode"),
    _t("ThrottledAlertSequenceId"),
    _t("ThrottledAlertCount"),
)
T_FD_ALERT_CODE, T_INSTR_NO, T_INSTR_TOTAL = (
    _t("FutureDatedAlertCode"),
    _t("InstructionNumber"),
    _t("TotalCommandInstructions"),
)
T_DCC_ALERT_CODE, T_DCC_ALERT = _t("DCCAlertCode"), _t("DCCAlert")
T_CH_DEVICE_ID, T_START_DT = _t("CommsHubDeviceID"), _t("StartDateTime")
T_DEVICE, T_DEVICE_TYPE = _t("Device"), _t("DeviceType")
T_DEVICE_STATUS_CHANGE = _t("DeviceStatusChange")
T_METER_MPXNS, T_ESME_VARIANT = _t("MeterMPxNs"), _t("ESMEVariant")
T_IMPORT_MPXN, T_SECONDARY_MPAN, T_EXPORT_MPAN = _t("ImportMPxN"), _t("SecondaryImportMPAN"), _t("ExportMPAN")
T_METER_DECOM, T_ASSOC_DEVICE = _t("MeterDecommissionOrWithdrawal"), _t("AssociatedType1Device")
T_SUPPLIER_CERT_TYPE, T_NO_CERT_TYPE = _t("SupplierCertificateType"), _t("NetworkOperatorCertificateType")
T_COMMAND_REQUEST_ID, T_DSP_SCHEDULE_ID = _t("CommandRequestID"), _t("DSPScheduleID")
T_UPDATE_FW_REQUEST_ID, T_METER_IDS = _t("UpdateFirmwareRequestID"), _t("MeterIDs")
T_TARGET_DEVICE_ID, T_TIMESTAMP_UC, T_TIMESTAMP = _t("TargetDeviceID"), _t("TimeStamp"), _t("Timestamp")
T_CH_TRANSFER_STATUS = _t("CommsHubTransferStatus")
T_FW_TRANSFER_ALERT, T_OTHER_DEVICE_ID, T_TRANSFER_RC = (
    _t("FirmwareTransferAlert"),
    _t("OtherDeviceID"),
    _t("TransferResponseCode"),
)
T_FW_VERSION_SMI, T_FW_VERSION_DEVICE = _t("FirmwareVersionSMI"), _t("FirmwareVersionDevice")
T_DEVICE_LIST, T_FW_UPDATE_STATUS = _t("DeviceList"), _t("FirmwareVersionUpdateStatus")
T_DEVICE_ALERT_CODE, T_PPMID_FW_ALERT, T_ACTIVATE_RC = (
    _t("DeviceAlertCode"),
    _t("PPMIDFirmwareUpgradeAlert"),
    _t("ActivateImageResultCode"),
)

_M = TypeVar("_M")
_new = object.__new__


def _slot_setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot descriptors' setters of a frozen, slotted model class without ``__post_init__``, in
    field order: what :func:`_builder` calls, for the hot paths that build objects inline (each
    sets every field, so the object equals and hashes like the constructed one; pinned by tests)."""
    if hasattr(cls, "__post_init__") or not hasattr(cls, "__slots__"):
        raise TypeError(f"{cls.__name__} validates in __post_init__ or has no slots; use its constructor")
    return tuple(cls.__dict__[f.name].__set__ for f in dataclasses.fields(cls))


def _builder(cls: type[_M]) -> Callable[..., _M]:
    """A positional constructor for a frozen, slotted model class that has no ``__post_init__``.

    It stores each field through its slot descriptor instead of the frozen ``__init__`` (which
    goes through ``object.__setattr__`` per field): same object, equal and hashing alike (pinned
    by tests), about 0.3 µs cheaper per object on the hot path. Every field is passed, in order.
    """
    setters = _slot_setters(cls)
    if len(setters) == 3:
        s0, s1, s2 = setters

        def build3(a: Any, b: Any, c: Any) -> _M:
            o = _new(cls)
            s0(o, a)
            s1(o, b)
            s2(o, c)
            return o

        return build3
    if len(setters) == 4:
        s0, s1, s2, s3 = setters

        def build4(a: Any, b: Any, c: Any, d: Any) -> _M:
            o = _new(cls)
            s0(o, a)
            s1(o, b)
            s2(o, c)
            s3(o, d)
            return o

        return build4
    raise TypeError(f"{cls.__name__}: no builder for {len(setters)} fields")


_MAX_U16, _MAX_U32 = 0xFFFF, 0xFFFFFFFF
_SCHEDULE_ID_MAX = 1_000_000_000_000


_SR_CHECKS: dict[tuple[str, str], tuple[str, ...]] = {}


def _check_sr(sr: str, srv: str, warnings: list[str]) -> None:
    """Memoised :func:`check_service_reference` (few distinct pairs; cache bounded)."""
    found = _SR_CHECKS.get((sr, srv))
    if found is None:
        out: list[str] = []
        check_service_reference(sr, srv, out)
        found = tuple(out)
        if len(_SR_CHECKS) < 4096:
            _SR_CHECKS[(sr, srv)] = found
    if found:
        warnings.extend(found)


# All children (elements and processing instructions, as ``list(el)``) in one C call: cheaper
# than ``list(el)``, which goes through the child iterator (pinned equal by tests).
_children: Callable[[etree._Element], list[etree._Element]] = etree._Element.getchildren  # type: ignore[attr-defined]


def _local(tag: str) -> str:
    """A tag as messages show it: the local name in the DUIS namespace, else ``{uri}name`` or
    ``name (no namespace)``."""
    if tag.startswith(_P):
        return tag[_NSLEN:]
    return tag if tag.startswith("{") else f"{tag} (no namespace)"


class _Ctx:
    """Per-document decode state: the date-time policy and the warnings found so far."""

    __slots__ = ("policy", "warnings")

    def __init__(self, policy: DateTimePolicy, warnings: list[str] | None = None) -> None:
        self.policy = policy
        self.warnings: list[str] = [] if warnings is None else warnings

    def dt(self, el: etree._Element, where: str) -> datetime:
        return parse_datetime(el.text, where, self.policy, self.warnings)


class _Seq:
    """Cursor over an element's element children, taken in schema order."""

    __slots__ = ("i", "items", "n", "where")

    def __init__(self, el: etree._Element, where: str) -> None:
        self.items = list(el.iterchildren(_ELEMENTS_ONLY))
        self.n = len(self.items)
        self.i = 0
        self.where = where

    def opt(self, tag: str) -> etree._Element | None:
        i = self.i
        if i < self.n:
            item = self.items[i]
            if item.tag == tag:
                self.i = i + 1
                return item
        return None

    def req(self, tag: str) -> etree._Element:
        item = self.opt(tag)
        if item is None:
            got = f"found {_local(str(self.items[self.i].tag))}" if self.i < self.n else "at end"
            raise InvalidField(f"{self.where}: missing {_local(tag)} ({got})")
        return item

    def many(self, tag: str) -> list[etree._Element]:
        out: list[etree._Element] = []
        while (item := self.opt(tag)) is not None:
            out.append(item)
        return out

    def next_any(self) -> etree._Element | None:
        """The next child whatever it is (for choices)."""
        if self.i < self.n:
            item = self.items[self.i]
            self.i += 1
            return item
        return None

    def end(self) -> None:
        if self.i < self.n:
            raise InvalidField(f"{self.where}: unexpected element {_local(str(self.items[self.i].tag))}")


def _text(el: etree._Element) -> str:
    """An xs:string value, exactly as received (no white-space processing)."""
    return el.text or ""


def _token(el: etree._Element) -> str:
    """An xs:token-like value: surrounding white space removed."""
    return (el.text or "").strip()


def _opt_text(el: etree._Element | None) -> str | None:
    return None if el is None else (el.text or "")


def _raw(el: etree._Element, where: str) -> RawBody:
    """An element the decoder does not interpret, kept as its exclusive-C14N bytes. Only DUIS
    elements are kept: every choice a RawBody stands for (a Request body, a ResponseMessage payload,
    a DCC alert, a SMETS1 response) holds elements of the DUIS namespace only, so anything else (a
    no-namespace ``<ActivateFirmware>``) is :class:`InvalidField`, not a body named like a DUIS one."""
    tag = str(el.tag)
    if not tag.startswith(_P):
        raise InvalidField(f"{where}: unexpected element {_local(tag)}: not in the DUIS namespace")
    try:
        xml = etree.tostring(el, method="c14n", exclusive=True, with_comments=False)
    except etree.C14NError as exc:  # e.g. a relative namespace URI, which C14N refuses
        raise InvalidField(f"{_local(tag)}: cannot be canonicalised: {exc}") from None
    return RawBody(tag[_NSLEN:], xml)


def _msgid(el: etree._Element, where: str) -> MessageId:
    return MessageId.parse(el.text or "", where)


# --------------------------------------------------------------------------- entry points


def decode(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, policy: DateTimePolicy = DEFAULT_POLICY
) -> Request | Response:
    """Parse untrusted DUIS bytes safely and decode them into a :class:`Request` or :class:`Response`."""
    root = parse_xml(data, max_bytes)
    # may_hold_pis(data), its first two finds inlined (the usual message stops at the second)
    q = data.find(b"?", 2)
    if q >= 0 and data.find(b"?", q + 1) >= 0 and may_hold_pis(data):
        _strip_pis(root)  # rare: the tree is ours, so its PIs are dropped in place
    if root.tag == T_RESPONSE:  # the common case, without the decode_tree call
        return _response(root, policy)
    return _decode_root(root, policy)


def decode_tree(
    root: etree._Element, *, policy: DateTimePolicy = DEFAULT_POLICY, pis: bool | None = None
) -> Request | Response:
    """Decode an already parsed root element (e.g. the tree a signature verifier just parsed).

    The tree is not changed. Processing instructions (and comments, which trees from parsers other
    than :func:`parse_xml` may hold) are ignored wherever they are: a tree that holds one is
    decoded from a copy without them, so a value split by one is read whole. ``pis=False`` says the
    caller knows the tree holds none (:func:`gateway.duis.safexml.may_hold_pis` of the bytes
    :func:`parse_xml` made it of) and skips the look (a walk of the tree in C, under a microsecond
    for a usual message).
    """
    if pis is not False and next(root.iter(_PI, _COMMENT), None) is not None:
        root = copy.deepcopy(root)
        _strip_pis(root)
    return _decode_root(root, policy)


_PI, _COMMENT = etree.ProcessingInstruction, etree.Comment


def _strip_pis(root: etree._Element) -> None:
    """Remove every processing instruction and comment under ``root``, keeping the text after each
    (joined to the text before it), so each simple value reads as its text nodes concatenated."""
    etree.strip_elements(root, _PI, _COMMENT, with_tail=False)


def _decode_root(root: etree._Element, policy: DateTimePolicy) -> Request | Response:
    tag = root.tag
    if tag == T_RESPONSE:
        return _response(root, policy)
    if tag == T_REQUEST:
        return _request(root, _Ctx(policy))
    if not isinstance(tag, str):
        raise NotDuis("document root is not an element")
    if tag.startswith(_P):
        raise NotDuis(f"root sr:{tag[_NSLEN:]} is not a DUIS Request or Response")
    raise NotDuis(f"root {tag} is not a DUIS Request or Response (namespace {SR_NS})")


_VERSIONS: dict[str, Decimal] = {}  # the few schemaVersion spellings seen (bounded below)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")  # xs:decimal's lexical space


def _schema_version(root: etree._Element) -> Decimal:
    raw = root.get("schemaVersion")
    if raw is None:
        raise InvalidField("schemaVersion attribute missing on the root")
    known = _VERSIONS.get(raw)
    if known is not None:
        return known
    # Only the XSD's xs:decimal lexical form (ASCII digits, white space collapsed): Decimal() alone
    # also takes "5_4" (as 54), non-ASCII digits, exponents, NaN and Infinity.
    text = raw.strip(" \t\r\n")
    if _DECIMAL.fullmatch(text) is None:
        raise InvalidField(f"schemaVersion is not an xs:decimal: {raw[:20]!r}")
    v = Decimal(text)
    if len(_VERSIONS) < 64:
        _VERSIONS[raw] = v
    return v


def _root_parts(root: etree._Element, name: str) -> tuple[etree._Element, etree._Element]:
    ch = list(root)
    n = len(ch)
    if (n == 2 or (n == 3 and ch[2].tag == _SIGNATURE)) and ch[0].tag == T_HEADER and ch[1].tag == T_BODY:
        return ch[0], ch[1]
    seq = _Seq(root, name)
    header = seq.req(T_HEADER)
    body = seq.req(T_BODY)
    seq.opt(_SIGNATURE)
    seq.end()
    return header, body


def _single_child(body: etree._Element, where: str) -> etree._Element:
    ch = list(body)
    if len(ch) == 1 and isinstance(ch[0].tag, str):
        return ch[0]
    seq = _Seq(body, where)
    child = seq.next_any()
    if child is None:
        raise InvalidField(f"{where} is empty")
    seq.end()
    return child


# --------------------------------------------------------------------------- requests


def _request(root: etree._Element, ctx: _Ctx) -> Request:
    version = _schema_version(root)
    header_el, body_el = _root_parts(root, "Request")
    h = _Seq(header_el, "Request/Header")
    request_id = _msgid(h.req(T_REQUEST_ID), "RequestID")
    first = h.opt(T_FIRST)
    preceding = h.opt(T_PRECEDING)
    cv = parse_int(h.req(T_CV).text, "CommandVariant", 1, 9)
    sr = _token(h.req(T_SR))
    srv = _token(h.req(T_SRV))
    h.end()
    header = RequestHeader(
        request_id=request_id,
        command_variant=cv,
        service_reference=sr,
        service_reference_variant=srv,
        first_in_sequence=None if first is None else parse_bool(first.text, "FirstInSequence"),
        preceding_request_id=None if preceding is None else _msgid(preceding, "PrecedingServiceRequestID"),
    )
    w = ctx.warnings
    _check_sr(sr, srv, w)
    allowed = SRV_COMMAND_VARIANTS.get(srv)
    if allowed is not None and cv not in allowed:
        w.append(f"CommandVariant {cv} is not valid for {srv} (allowed: {', '.join(map(str, allowed))})")
    child = _single_child(body_el, "Request/Body")
    decoder = _REQUEST_BODIES.get(child.tag)
    body: RequestBody = _raw(child, "Request/Body") if decoder is None else decoder(child, ctx)
    if isinstance(body, SignedPreCommand) and cv not in (5, 6, 7):
        w.append(f"SignedPreCommand body with CommandVariant {cv} (expected 5, 6 or 7)")
    return Request(header, body, version, tuple(w))


def _activate_firmware(el: etree._Element, ctx: _Ctx) -> ActivateFirmware:
    s = _Seq(el, "ActivateFirmware")
    exec_el = s.opt(T_EXEC_DT)
    fw_hash = parse_hex(s.req(T_FW_HASH).text, "ActivateFirmware/FirmwareHash")
    s.end()
    if len(fw_hash) != 32:
        raise InvalidField(f"ActivateFirmware/FirmwareHash must be 32 octets, got {len(fw_hash)}")
    return ActivateFirmware(fw_hash, None if exec_el is None else ctx.dt(exec_el, "ExecutionDateTime"))


def _signed_pre_command(el: etree._Element, ctx: _Ctx) -> SignedPreCommand:
    s = _Seq(el, "SignedPreCommand")
    exec_el = s.opt(T_EXEC_DT)
    payload = parse_base64(s.req(T_GBCS).text, "SignedPreCommand/GBCSPayload")
    s.end()
    return SignedPreCommand(payload, None if exec_el is None else ctx.dt(exec_el, "ExecutionDateTime"))


def _property_filter(el: etree._Element, where: str) -> PropertyFilter:
    s = _Seq(el, where)
    pf = PropertyFilter(_text(s.req(T_POST_CODE)), _text(s.req(T_ADDRESS_ID)))
    s.end()
    return pf


def _uprn(el: etree._Element, where: str) -> int:
    return parse_int(el.text, where, 1, 999_999_999_999)


def _read_inventory(el: etree._Element, ctx: _Ctx) -> ReadInventory:
    child = _single_child(el, "ReadInventory")
    tag = child.tag
    if tag == T_MPXN:
        return ReadInventory(mpxn=_text(child))
    if tag == T_DEVICE_ID:
        return ReadInventory(device_id=parse_eui_field(child.text, "ReadInventory/DeviceID"))
    if tag == T_UPRN:
        return ReadInventory(uprn=_uprn(child, "ReadInventory/UPRN"))
    if tag == T_PROPERTY_FILTER:
        return ReadInventory(property_filter=_property_filter(child, "ReadInventory/PropertyFilter"))
    raise InvalidField(f"ReadInventory: unexpected element {_local(str(tag))}")


def _update_firmware(el: etree._Element, ctx: _Ctx) -> UpdateFirmware:
    s = _Seq(el, "UpdateFirmware")
    image = parse_base64(s.req(T_FW_IMAGE).text, "UpdateFirmware/FirmwareImage")
    version = _text(s.req(T_FW_VERSION))
    ids = parse_eui_list(s.req(T_DEVICE_ID_LIST).text, "UpdateFirmware/DeviceIDList")
    s.end()
    return UpdateFirmware(image, version, ids)


_REQUEST_BODIES: dict[str, Callable[[etree._Element, _Ctx], RequestBody]] = {
    _t("ActivateFirmware"): _activate_firmware,
    _t("SignedPreCommand"): _signed_pre_command,
    _t("ReadInventory"): _read_inventory,
    _t("UpdateFirmware"): _update_firmware,
}


# --------------------------------------------------------------------------- responses


def _response(root: etree._Element, policy: DateTimePolicy) -> Response:
    version = _VERSIONS.get(root.get("schemaVersion", ""))
    if version is None:
        version = _schema_version(root)
    ch = _children(root)
    n = len(ch)
    if (n == 2 or (n == 3 and ch[2].tag == _SIGNATURE)) and ch[0].tag == T_HEADER and ch[1].tag == T_BODY:
        header_el = ch[0]
        body_el = ch[1]
    else:
        header_el, body_el = _root_parts(root, "Response")
    hc = _children(header_el)
    n = len(hc)
    # Exact header shapes first (one tag comparison per child); anything else (comments, wrong
    # order, missing field) takes the checking walk, which explains what is wrong.
    rq: etree._Element | None
    rs: etree._Element | None
    if n == 4:
        rq, rs, code_el, when_el = hc
        fast = (
            rq.tag == T_REQUEST_ID
            and rs.tag == T_RESPONSE_ID
            and code_el.tag == T_RESPONSE_CODE
            and when_el.tag == T_RESPONSE_DT
        )
    elif n == 3:
        id_el, code_el, when_el = hc
        fast = code_el.tag == T_RESPONSE_CODE and when_el.tag == T_RESPONSE_DT and (tag0 := id_el.tag) in _IDS
        rq, rs = ((id_el, None) if tag0 == T_REQUEST_ID else (None, id_el)) if fast else (None, None)
    else:
        fast = (
            n == 2 and (code_el := hc[0]).tag == T_RESPONSE_CODE and (when_el := hc[1]).tag == T_RESPONSE_DT
        )
        rq = rs = None
    w: list[str] = []  # the warnings
    when: datetime | None
    if fast:
        code = (code_el.text or "").strip()
        t = when_el.text or ""
        when = parse_dcc_utc(t)  # the DCC's own UTC forms; anything else goes to parse_datetime
        if when is None:
            when = parse_datetime(t, "ResponseDateTime", policy, w)
    else:
        h = _Seq(header_el, "Response/Header")
        rq = h.opt(T_REQUEST_ID)
        rs = h.opt(T_RESPONSE_ID)
        code = _token(h.req(T_RESPONSE_CODE))
        when = parse_datetime(h.req(T_RESPONSE_DT).text, "ResponseDateTime", policy, w)
        h.end()
    if not code:
        raise InvalidField("ResponseCode is empty")
    header = _new(ResponseHeader)
    _set_code(header, code)
    _set_when(header, when)
    if rq is not None and rs is not None:  # a device response: the ResponseID swaps the RequestID
        request_id, response_id = parse_id_pair(rq.text or "", rs.text or "")
        _set_request_id(header, request_id)
        _set_response_id(header, response_id)
    else:
        _set_request_id(header, None if rq is None else _parse_msgid(rq.text or "", "RequestID"))
        _set_response_id(header, None if rs is None else _parse_msgid(rs.text or "", "ResponseID"))
    bc = _children(body_el)
    child = bc[0] if len(bc) == 1 else None
    if child is None or not isinstance(child.tag, str):
        child = _single_child(body_el, "Response/Body")
    tag = child.tag
    body: ResponseBody
    out = _new(Response)
    _set_header(out, header)
    _set_version(out, version)
    # The hot bodies in their exact layouts are read here, without the per-body calls: the same
    # values as _dcc_alert_message / _power_outage / _response_message, which every other layout
    # takes (pinned against the checking walk by tests/duis/test_duis_fast_paths.py).
    if tag == _DCC_ALERT_MESSAGE:
        dc = _children(child)
        if len(dc) == 2 and (c0 := dc[0]).tag == T_DCC_ALERT_CODE and (c1 := dc[1]).tag == T_DCC_ALERT:
            ac = _children(c1)
            if len(ac) == 1 and (poe := ac[0]).tag == T_POWER_OUTAGE_EVENT:
                pc = _children(poe)
                if len(pc) == 3:
                    hub_el, start_el, mpxn_el = pc
                    if hub_el.tag == T_CH_DEVICE_ID and start_el.tag == T_START_DT and mpxn_el.tag == T_MPXN:
                        outage = _new(PowerOutageEvent)
                        _set_hub(outage, parse_eui_field(hub_el.text, "PowerOutageEvent/CommsHubDeviceID"))
                        t = start_el.text or ""
                        when = parse_dcc_utc(t)
                        if when is None:
                            when = parse_datetime(t, "PowerOutageEvent/StartDateTime", policy, w)
                        _set_start(outage, when)
                        mpxn = mpxn_el.text or ""
                        _set_mpxn(outage, mpxn)
                        code = c0.text or ""
                        if code != "AD1":
                            w.append(f"PowerOutageEvent carried under DCCAlertCode {code!r}, not AD1")
                        if not (len(mpxn) == 13 and mpxn.isascii() and mpxn.isdigit()):
                            w.append(f"PowerOutageEvent MPxN {mpxn!r} is not a 13-digit MPAN")
                        alert = _new(DCCAlertMessage)
                        _set_alert_code(alert, code)
                        _set_alert(alert, outage)
                        _set_alert_seq(alert, None)
                        _set_alert_count(alert, None)
                        _set_body(out, alert)
                        _set_warnings(out, tuple(w) if w else ())
                        return out
        body = _dcc_alert_message(child, _Ctx(policy, w))
    elif tag == _RESPONSE_MESSAGE:
        mc = _children(child)
        if len(mc) == 3:
            sr_el, srv_el, gbcs_el = mc
            if sr_el.tag == T_SR and srv_el.tag == T_SRV and gbcs_el.tag == T_GBCS:
                sr = (sr_el.text or "").strip()
                srv = (srv_el.text or "").strip()
                found = _SR_CHECKS.get((sr, srv))
                if found is None or found:
                    _check_sr(sr, srv, w)
                message = _new(ResponseMessage)
                _set_sr(message, sr)
                _set_srv(message, srv)
                _set_payload(message, parse_base64(gbcs_el.text, "ResponseMessage/GBCSPayload"))
                _set_body(out, message)
                _set_warnings(out, tuple(w) if w else ())
                return out
        body = _response_message(child, _Ctx(policy, w))
    elif tag == _DEVICE_ALERT_MESSAGE:
        body = _device_alert_message(child, _Ctx(policy, w))
    elif tag == _SMETS1_RESPONSE_MESSAGE:
        body = _raw(child, "Response/Body")
    else:
        raise InvalidField(f"Response/Body: unexpected element {_local(str(tag))}")
    _set_body(out, body)
    _set_warnings(out, tuple(w) if w else ())
    return out


_IDS = (T_REQUEST_ID, T_RESPONSE_ID)


_set_header, _set_body, _set_version, _set_warnings = _slot_setters(Response)
_set_alert_code, _set_alert, _set_alert_seq, _set_alert_count = _slot_setters(DCCAlertMessage)
_set_hub, _set_start, _set_mpxn = _slot_setters(PowerOutageEvent)
_set_code, _set_when, _set_request_id, _set_response_id = _slot_setters(ResponseHeader)
_set_sr, _set_srv, _set_payload = _slot_setters(ResponseMessage)
_parse_msgid = MessageId.parse


_RESPONSE_MESSAGE = _t("ResponseMessage")
_DCC_ALERT_MESSAGE = _t("DCCAlertMessage")
_DEVICE_ALERT_MESSAGE = _t("DeviceAlertMessage")
_SMETS1_RESPONSE_MESSAGE = _t("SMETS1ResponseMessage")


def _response_message(el: etree._Element, ctx: _Ctx) -> ResponseMessage:
    ch = _children(el)
    n = len(ch)
    child: etree._Element | None
    if n == 3:
        sr_el, srv_el, child = ch
        if sr_el.tag == T_SR and srv_el.tag == T_SRV and child.tag == T_GBCS:  # the hot shape
            sr = (sr_el.text or "").strip()
            srv = (srv_el.text or "").strip()
            found = _SR_CHECKS.get((sr, srv))
            if found is None or found:
                _check_sr(sr, srv, ctx.warnings)
            return _build_response_message(sr, srv, parse_base64(child.text, "ResponseMessage/GBCSPayload"))
    if (
        (n == 3 or n == 2)
        and ch[0].tag == T_SR
        and ch[1].tag == T_SRV
        and (n == 2 or isinstance(ch[2].tag, str))
    ):
        sr = (ch[0].text or "").strip()
        srv = (ch[1].text or "").strip()
        child = ch[2] if n == 3 else None
    else:
        s = _Seq(el, "ResponseMessage")
        sr = _token(s.req(T_SR))
        srv = _token(s.req(T_SRV))
        child = s.next_any()
        s.end()
    _check_sr(sr, srv, ctx.warnings)
    payload: ResponsePayload | None
    if child is None:
        payload = None
    elif child.tag == T_GBCS:
        payload = parse_base64(child.text, "ResponseMessage/GBCSPayload")
    else:
        decoder = _PAYLOADS.get(child.tag)
        payload = _raw(child, "ResponseMessage") if decoder is None else decoder(child, ctx)
    return _build_response_message(sr, srv, payload)


_build_response_message = _builder(ResponseMessage)


def _future_dated_alert(el: etree._Element, ctx: _Ctx) -> FutureDatedDeviceAlertMessage:
    s = _Seq(el, "FutureDatedDeviceAlertMessage")
    code = parse_hex(s.req(T_FD_ALERT_CODE).text, "FutureDatedAlertCode")
    payload = parse_base64(s.req(T_GBCS).text, "FutureDatedDeviceAlertMessage/GBCSPayload")
    number = parse_int(s.req(T_INSTR_NO).text, "InstructionNumber", 0, _MAX_U16)
    total = parse_int(s.req(T_INSTR_TOTAL).text, "TotalCommandInstructions", 0, _MAX_U16)
    s.end()
    if code not in (b"\x8f\x66", b"\x8f\x67"):
        ctx.warnings.append(f"FutureDatedAlertCode {code.hex().upper()} is neither 8F66 nor 8F67")
    return FutureDatedDeviceAlertMessage(code, payload, number, total)


def _pre_command(el: etree._Element, ctx: _Ctx) -> PreCommand:
    s = _Seq(el, "PreCommand")
    version = _text(s.req(T_GBCS_VERSION))
    payload = parse_base64(s.req(T_GBCS).text, "PreCommand/GBCSPayload")
    s.end()
    return PreCommand(version, payload)


_DEVICE_FIELDS: tuple[tuple[str, str], ...] = (
    ("smets_chts_version", _t("SMETSCHTSVersion")),
    ("device_firmware_version", _t("DeviceFirmwareVersion")),
    ("device_firmware_version_status", _t("DeviceFirmwareVersionStatus")),
    ("cpl_status", _t("CPLStatus")),
)
_DEVICE_FIELDS_2: tuple[tuple[str, str], ...] = (
    ("import_mpxn", _t("ImportMPxN")),
    ("secondary_import_mpan", _t("SecondaryImportMPAN")),
    ("export_mpan", _t("ExportMPAN")),
    ("esme_variant", _t("ESMEVariant")),
)
_DEVICE_FIELDS_3: tuple[tuple[str, str], ...] = (
    ("csp_region", _t("CSPRegion")),
    ("device_gbcs_version", _t("DeviceGBCSVersion")),
    ("han_variant", _t("HANVariant")),
    ("s1sp", _t("S1SP")),
    ("connectivity", _t("Connectivity")),
)
T_DEVICE_STATUS, T_MANUFACTURER, T_MODEL = _t("DeviceStatus"), _t("DeviceManufacturer"), _t("DeviceModel")
T_DATE_COMMISSIONED = _t("DateCommissioned")


def _inventory_device(el: etree._Element) -> InventoryDevice:
    s = _Seq(el, "DSPInventory/Device")
    kw: dict[str, Any] = {
        "device_id": parse_eui_field(s.req(T_DEVICE_ID).text, "Device/DeviceID"),
        "device_type": _token(s.req(T_DEVICE_TYPE)),
    }
    status = s.opt(T_DEVICE_STATUS)
    if status is not None:
        kw["device_status"] = _token(status)
    kw["device_manufacturer"] = _text(s.req(T_MANUFACTURER))
    kw["device_model"] = _text(s.req(T_MODEL))
    for name, tag in _DEVICE_FIELDS:
        item = s.opt(tag)
        if item is not None:
            kw[name] = _text(item)
    commissioned = s.opt(T_DATE_COMMISSIONED)
    if commissioned is not None:
        kw["date_commissioned"] = parse_date(commissioned.text, "Device/DateCommissioned")
    for name, tag in _DEVICE_FIELDS_2:
        item = s.opt(tag)
        if item is not None:
            kw[name] = _text(item)
    uprn = s.opt(T_UPRN)
    if uprn is not None:
        kw["uprn"] = _uprn(uprn, "Device/UPRN")
    pf = s.opt(T_PROPERTY_FILTER)
    if pf is not None:
        kw["property_filter"] = _property_filter(pf, "Device/PropertyFilter")
    for name, tag in _DEVICE_FIELDS_3:
        item = s.opt(tag)
        if item is not None:
            kw[name] = _text(item)
    s.end()
    return InventoryDevice(**kw)


def _dsp_inventory(el: etree._Element, ctx: _Ctx) -> DSPInventory:
    s = _Seq(el, "DSPInventory")
    devices = tuple(_inventory_device(d) for d in s.many(T_DEVICE))
    s.end()
    if not devices:
        raise InvalidField("DSPInventory has no Device")
    return DSPInventory(devices)


_PAYLOADS: dict[str, Callable[[etree._Element, _Ctx], ResponsePayload]] = {
    _t("FutureDatedDeviceAlertMessage"): _future_dated_alert,
    _t("PreCommand"): _pre_command,
    _t("DSPInventory"): _dsp_inventory,
}


def _throttled(s: _Seq) -> tuple[int | None, int | None]:
    seq_el = s.opt(T_THROTTLED_SEQ)
    count_el = s.opt(T_THROTTLED_COUNT)
    return (
        None if seq_el is None else parse_int(seq_el.text, "ThrottledAlertSequenceId", 0, _MAX_U32),
        None if count_el is None else parse_int(count_el.text, "ThrottledAlertCount", 0, _MAX_U32),
    )


def _device_alert_message(el: etree._Element, ctx: _Ctx) -> DeviceAlertMessage:
    ch = _children(el)
    if len(ch) == 2 and ch[0].tag == T_ALERT_CODE and ch[1].tag == T_GBCS:  # the unthrottled shape
        return _build_device_alert(
            parse_hex(ch[0].text, "DeviceAlertMessage/AlertCode"),
            parse_base64(ch[1].text, "DeviceAlertMessage/GBCSPayload"),
            None,
            None,
        )
    s = _Seq(el, "DeviceAlertMessage")
    code = parse_hex(s.req(T_ALERT_CODE).text, "DeviceAlertMessage/AlertCode")
    seq_id, count = _throttled(s)
    payload = parse_base64(s.req(T_GBCS).text, "DeviceAlertMessage/GBCSPayload")
    s.end()
    return DeviceAlertMessage(code, payload, seq_id, count)


_build_device_alert = _builder(DeviceAlertMessage)
T_POWER_OUTAGE_EVENT = _t("PowerOutageEvent")


def _dcc_alert_message(el: etree._Element, ctx: _Ctx) -> DCCAlertMessage:
    ch = _children(el)
    seq_id: int | None
    count: int | None
    if len(ch) == 2 and ch[0].tag == T_DCC_ALERT_CODE and ch[1].tag == T_DCC_ALERT:  # unthrottled
        code = ch[0].text or ""
        seq_id = count = None
        wc = _children(ch[1])
        child = wc[0] if len(wc) == 1 else None
        if child is None or not isinstance(child.tag, str):
            child = _single_child(ch[1], "DCCAlert")
    else:
        s = _Seq(el, "DCCAlertMessage")
        code = _text(s.req(T_DCC_ALERT_CODE))
        seq_id, count = _throttled(s)
        child = _single_child(s.req(T_DCC_ALERT), "DCCAlert")
        s.end()
    w = ctx.warnings
    alert: DCCAlertBody
    if child.tag == T_POWER_OUTAGE_EVENT:
        alert = _power_outage(child, ctx)
        if code != "AD1":
            w.append(f"PowerOutageEvent carried under DCCAlertCode {code!r}, not AD1")
        mpxn = alert.mpxn
        if not (len(mpxn) == 13 and mpxn.isascii() and mpxn.isdigit()):
            w.append(f"PowerOutageEvent MPxN {mpxn!r} is not a 13-digit MPAN")
    else:
        decoder = _DCC_ALERTS.get(child.tag)
        alert = _raw(child, "DCCAlert") if decoder is None else decoder(child, ctx)
        if code == "AD1":
            w.append(f"DCCAlertCode AD1 carries {_local(str(child.tag))}, not PowerOutageEvent")
    return _build_dcc_alert(code, alert, seq_id, count)


_build_dcc_alert = _builder(DCCAlertMessage)


def _power_outage(el: etree._Element, ctx: _Ctx) -> PowerOutageEvent:
    ch = _children(el)
    if len(ch) == 3 and ch[0].tag == T_CH_DEVICE_ID and ch[1].tag == T_START_DT and ch[2].tag == T_MPXN:
        return _build_power_outage(
            parse_eui_field(ch[0].text, "PowerOutageEvent/CommsHubDeviceID"),
            parse_datetime(ch[1].text, "PowerOutageEvent/StartDateTime", ctx.policy, ctx.warnings),
            ch[2].text or "",
        )
    s = _Seq(el, "PowerOutageEvent")
    hub = parse_eui_field(s.req(T_CH_DEVICE_ID).text, "PowerOutageEvent/CommsHubDeviceID")
    start = ctx.dt(s.req(T_START_DT), "PowerOutageEvent/StartDateTime")
    mpxn = _text(s.req(T_MPXN))
    s.end()
    return PowerOutageEvent(hub, start, mpxn)


_build_power_outage = _builder(PowerOutageEvent)


def _meter_mpxns(el: etree._Element, where: str) -> MeterMPxNs:
    s = _Seq(el, where)
    imp = _text(s.req(T_IMPORT_MPXN))
    sec = _opt_text(s.opt(T_SECONDARY_MPAN))
    exp = _opt_text(s.opt(T_EXPORT_MPAN))
    s.end()
    return MeterMPxNs(imp, sec, exp)


def _device_status_change(el: etree._Element, ctx: _Ctx) -> DeviceStatusChangeEvent:
    s = _Seq(el, "DeviceStatusChangeEvent")
    device_id = parse_eui_field(s.req(T_DEVICE_ID).text, "DeviceStatusChangeEvent/DeviceID")
    change_el = _single_child(s.req(T_DEVICE_STATUS_CHANGE), "DeviceStatusChange")
    s.end()
    change_tag = str(change_el.tag)
    if not change_tag.startswith(_P):  # a no-namespace <DeviceSuspended/> is not the DUIS one
        raise InvalidField(f"DeviceStatusChange: unexpected element {_local(change_tag)}")
    name = change_tag[_NSLEN:]
    c = _Seq(change_el, f"DeviceStatusChange/{name}")
    kw: dict[str, Any] = {}
    if name == "MeterIdentity":
        kw["mpxns"] = _meter_mpxns(c.req(T_METER_MPXNS), "MeterIdentity/MeterMPxNs")
        ev = c.opt(T_ESME_VARIANT)
        kw["esme_variant"] = None if ev is None else _token(ev)
    elif name == "MeterDecommissioningOrWithdrawal":
        kw["mpxns"] = _meter_mpxns(c.req(T_METER_DECOM), "MeterDecommissioningOrWithdrawal")
        devices = []
        for a in c.many(T_ASSOC_DEVICE):
            a_s = _Seq(a, "AssociatedType1Device")
            devices.append(
                AssociatedDevice(
                    parse_eui_field(a_s.req(T_DEVICE_ID).text, "AssociatedType1Device/DeviceID"),
                    _token(a_s.req(T_DEVICE_TYPE)),
                )
            )
            a_s.end()
        kw["associated_devices"] = tuple(devices)
    elif name == "RecoveryCompleteACBCredentials":
        kw["supplier_certificate_types"] = tuple(_token(x) for x in c.many(T_SUPPLIER_CERT_TYPE))
        kw["network_operator_certificate_types"] = tuple(_token(x) for x in c.many(T_NO_CERT_TYPE))
    elif name not in _EMPTY_STATUS_CHANGES:
        raise InvalidField(f"DeviceStatusChange: unexpected element {name}")
    c.end()
    return DeviceStatusChangeEvent(device_id, name, **kw)


_EMPTY_STATUS_CHANGES = frozenset(
    {
        "DeviceRemovedFromInventory",
        "CHFDecommissioning",
        "DeviceSuspended",
        "DeviceRestored",
        "RecoveryComplete",
    }
)


def _command_failure(el: etree._Element, ctx: _Ctx) -> CommandFailure:
    s = _Seq(el, "CommandFailure")
    rid = _msgid(s.req(T_COMMAND_REQUEST_ID), "CommandFailure/CommandRequestID")
    sched = s.opt(T_DSP_SCHEDULE_ID)
    dev = parse_eui_field(s.req(T_DEVICE_ID).text, "CommandFailure/DeviceID")
    s.end()
    return CommandFailure(
        rid, dev, None if sched is None else parse_int(sched.text, "DSPScheduleID", 0, _SCHEDULE_ID_MAX)
    )


def _fw_distribution_failure(el: etree._Element, ctx: _Ctx) -> FirmwareDistributionFailure:
    s = _Seq(el, "FirmwareDistributionFailure")
    rid = _msgid(s.req(T_UPDATE_FW_REQUEST_ID), "FirmwareDistributionFailure/UpdateFirmwareRequestID")
    ids = parse_eui_list(s.req(T_METER_IDS).text, "FirmwareDistributionFailure/MeterIDs")
    s.end()
    return FirmwareDistributionFailure(rid, ids)


def _csp_fw_delivery(el: etree._Element, ctx: _Ctx) -> CSPFirmwareDeliveryStatus:
    w = "CSPFirmwareDeliveryStatus"
    s = _Seq(el, w)
    out = CSPFirmwareDeliveryStatus(
        update_firmware_request_id=_msgid(s.req(T_UPDATE_FW_REQUEST_ID), f"{w}/UpdateFirmwareRequestID"),
        comms_hub_device_id=parse_eui_field(s.req(T_CH_DEVICE_ID).text, f"{w}/CommsHubDeviceID"),
        target_device_id=parse_eui_field(s.req(T_TARGET_DEVICE_ID).text, f"{w}/TargetDeviceID"),
        firmware_version=_text(s.req(T_FW_VERSION)),
        timestamp=ctx.dt(s.req(T_TIMESTAMP_UC), f"{w}/TimeStamp"),
        comms_hub_transfer_status=_token(s.req(T_CH_TRANSFER_STATUS)),
    )
    s.end()
    return out


def _comms_hub_alert(el: etree._Element, ctx: _Ctx) -> CommsHubAlert:
    s = _Seq(el, "CommsHubAlert")
    ch = parse_eui_field(s.req(T_CH_DEVICE_ID).text, "CommsHubAlert/CommsHubDeviceID")
    code = parse_hex(s.req(T_ALERT_CODE).text, "CommsHubAlert/AlertCode")
    ts = s.opt(T_TIMESTAMP_UC)
    fta_el = s.opt(T_FW_TRANSFER_ALERT)
    s.end()
    fta = None
    if fta_el is not None:
        f = _Seq(fta_el, "FirmwareTransferAlert")
        rid = f.opt(T_UPDATE_FW_REQUEST_ID)
        fta = FirmwareTransferAlert(
            update_firmware_request_id=None
            if rid is None
            else _msgid(rid, "FirmwareTransferAlert/UpdateFirmwareRequestID"),
            other_device_id=parse_eui_field(
                f.req(T_OTHER_DEVICE_ID).text, "FirmwareTransferAlert/OtherDeviceID"
            ),
            firmware_version=_text(f.req(T_FW_VERSION)),
            transfer_response_code=_token(f.req(T_TRANSFER_RC)),
        )
        f.end()
    return CommsHubAlert(ch, code, None if ts is None else ctx.dt(ts, "CommsHubAlert/TimeStamp"), fta)


def _fw_version_mismatch(el: etree._Element, ctx: _Ctx) -> FirmwareVersionMismatch:
    s = _Seq(el, "FirmwareVersionMismatch")
    out = FirmwareVersionMismatch(
        parse_eui_field(s.req(T_DEVICE_ID).text, "FirmwareVersionMismatch/DeviceID"),
        _token(s.req(T_DEVICE_TYPE)),
        _text(s.req(T_FW_VERSION_SMI)),
        _text(s.req(T_FW_VERSION_DEVICE)),
    )
    s.end()
    return out


def _fw_upgrade_requested(el: etree._Element, ctx: _Ctx) -> FirmwareUpgradeRequested:
    s = _Seq(el, "FirmwareUpgradeRequested")
    out = FirmwareUpgradeRequested(
        _token(s.req(T_DEVICE_TYPE)),
        _text(s.req(T_FW_VERSION)),
        parse_eui_list(s.req(T_DEVICE_LIST).text, "FirmwareUpgradeRequested/DeviceList"),
    )
    s.end()
    return out


def _ch_fw_activation(el: etree._Element, ctx: _Ctx) -> CommsHubFirmwareActivation:
    s = _Seq(el, "CommsHubFirmwareActivation")
    out = CommsHubFirmwareActivation(
        parse_eui_field(s.req(T_DEVICE_ID).text, "CommsHubFirmwareActivation/DeviceID"),
        _text(s.req(T_FW_VERSION)),
    )
    s.end()
    return out


def _smets1_ch_fw(el: etree._Element, ctx: _Ctx) -> SMETS1CHFirmwareNotification:
    s = _Seq(el, "SMETS1CHFirmwareNotification")
    out = SMETS1CHFirmwareNotification(
        parse_eui_field(s.req(T_DEVICE_ID).text, "SMETS1CHFirmwareNotification/DeviceID"),
        _text(s.req(T_FW_VERSION)),
        _token(s.req(T_FW_UPDATE_STATUS)),
    )
    s.end()
    return out


def _ppmid_alert(el: etree._Element, ctx: _Ctx) -> PPMIDAlert:
    s = _Seq(el, "PPMIDAlert")
    dev = parse_eui_field(s.req(T_DEVICE_ID).text, "PPMIDAlert/DeviceID")
    code = parse_hex(s.req(T_DEVICE_ALERT_CODE).text, "PPMIDAlert/DeviceAlertCode")
    ts = s.opt(T_TIMESTAMP)
    up_el = s.opt(T_PPMID_FW_ALERT)
    s.end()
    up = None
    if up_el is not None:
        u = _Seq(up_el, "PPMIDFirmwareUpgradeAlert")
        up = PPMIDFirmwareUpgradeAlert(_text(u.req(T_FW_VERSION)), _token(u.req(T_ACTIVATE_RC)))
        u.end()
    return PPMIDAlert(dev, code, None if ts is None else ctx.dt(ts, "PPMIDAlert/Timestamp"), up)


_DCC_ALERTS: dict[str, Callable[[etree._Element, _Ctx], DCCAlertBody]] = {
    _t("PowerOutageEvent"): _power_outage,
    _t("DeviceStatusChangeEvent"): _device_status_change,
    _t("CommandFailure"): _command_failure,
    _t("FirmwareDistributionFailure"): _fw_distribution_failure,
    _t("CSPFirmwareDeliveryStatus"): _csp_fw_delivery,
    _t("CommsHubAlert"): _comms_hub_alert,
    _t("FirmwareVersionMismatch"): _fw_version_mismatch,
    _t("FirmwareUpgradeRequested"): _fw_upgrade_requested,
    _t("CommsHubFirmwareActivation"): _ch_fw_activation,
    _t("SMETS1CHFirmwareNotification"): _smets1_ch_fw,
    _t("PPMIDAlert"): _ppmid_alert,
}
