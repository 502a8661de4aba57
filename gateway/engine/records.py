"""Plain-record codec for the engine's frozen dataclasses (events, decisions, state records).

``to_record(obj)`` gives a JSON-ready ``dict`` (date-times as ISO 8601 text with offset, EUIs as
ints, enums as their stable strings, tuples/frozensets as lists, nested dataclasses as dicts,
events tagged with their ``kind``); ``from_record(cls, data)`` is its exact inverse. A plan per
class is compiled once from the type hints, so encoding is a handful of calls per field. A record
lacking a field that has a default decodes with that default (stored state written before the field
was added stays readable); lacking any other field is an :class:`EngineStateError`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from gateway.engine.errors import EngineStateError

__all__ = ["Record", "decode_tagged", "encode_tagged", "from_record", "register_kind", "to_record"]

Record = dict[str, Any]
T = TypeVar("T")

_Enc = Callable[[Any], Any]
_Dec = Callable[[Any], Any]
_PLANS: dict[type, tuple[tuple[str, _Enc, _Dec, bool], ...]] = {}
_KINDS: dict[str, type] = {}


def register_kind(cls: type[T]) -> type[T]:
    """Class decorator: make a dataclass with a ``kind`` ClassVar decodable from a tagged record."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str):
        raise TypeError(f"{cls.__name__} needs a str ClassVar 'kind'")
    _KINDS[kind] = cls
    return cls


def _ident(v: Any) -> Any:
    return v


def _enc_dt(v: datetime) -> str:
    return v.isoformat()


def _dec_dt(v: Any) -> datetime:
    if not isinstance(v, str):
        raise EngineStateError(f"date-time must be text, got {v!r}")
    try:
        return datetime.fromisoformat(v)  # an event kept as received may carry a naive time
    except ValueError as exc:
        raise EngineStateError(f"not an ISO 8601 date-time: {v!r}") from exc


def _scalar_dec(tp: type) -> _Dec:
    def dec(v: Any) -> Any:
        if tp is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if not isinstance(v, tp) or (tp is int and isinstance(v, bool)):
            raise EngineStateError(f"expected {tp.__name__}, got {v!r}")
        return v

    return dec


def _codec(tp: Any) -> tuple[_Enc, _Dec]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        optional = len(members) != len(args)
        if len(members) == 1:
            enc, dec = _codec(members[0])
        elif all(dataclasses.is_dataclass(m) for m in members):
            enc, dec = _enc_tagged, _dec_tagged
        else:
            raise TypeError(f"unsupported union {tp!r}")
        if not optional:
            return enc, dec
        return (lambda v: None if v is None else enc(v)), (lambda v: None if v is None else dec(v))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            ienc, idec = _codec(args[0])
            return (lambda v: [ienc(x) for x in v]), (lambda v: tuple(idec(x) for x in _seq(v)))
        codecs = [_codec(a) for a in args]
        return (
            lambda v: [c[0](x) for c, x in zip(codecs, v, strict=True)],
            lambda v: tuple(c[1](x) for c, x in zip(codecs, _seq(v), strict=True)),
        )
    if origin is frozenset:
        ienc, idec = _codec(args[0])
        return (lambda v: sorted(ienc(x) for x in v)), (lambda v: frozenset(idec(x) for x in _seq(v)))
    if origin is typing.Literal:
        allowed = set(args)

        def dec_lit(v: Any) -> Any:
            if v not in allowed:
                raise EngineStateError(f"{v!r} is not one of {sorted(map(str, allowed))}")
            return v

        return _ident, dec_lit
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            enum_tp = tp

            def dec_enum(v: Any) -> Any:
                try:
                    return enum_tp(v)
                except ValueError as exc:
                    raise EngineStateError(f"unknown {enum_tp.__name__} {v!r}") from exc

            return (lambda v: v.value), dec_enum
        if tp is datetime:
            return _enc_dt, _dec_dt
        if tp in (int, str, bool, float):
            return _ident, _scalar_dec(tp)
        if dataclasses.is_dataclass(tp):
            cls = tp
            return to_record, (lambda v: from_record(cls, v))
    raise TypeError(f"unsupported field type {tp!r}")


def _seq(v: Any) -> list[Any]:
    if not isinstance(v, list | tuple):
        raise EngineStateError(f"expected a list, got {v!r}")
    return list(v)


def encode_tagged(v: Any) -> Record:
    """``to_record`` plus the class's ``kind`` tag (for unions such as events)."""
    return _enc_tagged(v)


def _enc_tagged(v: Any) -> Record:
    rec = to_record(v)
    rec["kind"] = type(v).kind
    return rec


def _dec_tagged(v: Any) -> Any:
    if not isinstance(v, Mapping) or not isinstance(v.get("kind"), str):
        raise EngineStateError(f"tagged record without kind: {v!r}")
    cls = _KINDS.get(v["kind"])
    if cls is None:
        raise EngineStateError(f"unknown record kind {v['kind']!r}")
    return from_record(cls, {k: x for k, x in v.items() if k != "kind"})


def _plan(cls: type) -> tuple[tuple[str, _Enc, _Dec, bool], ...]:
    """Per init field: name, encoder, decoder, and whether a record must carry it (a field with a
    default may be missing: the record was written before that field was added)."""
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = tuple(
            (
                f.name,
                *_codec(hints[f.name]),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
            if f.init
        )
        _PLANS[cls] = plan
    return plan


_ENCODERS: dict[type, Callable[[Any], Record]] = {}


@functools.lru_cache(maxsize=1 << 16)
def _iso_of(value: datetime, _offset: timedelta | None, _fold: int) -> str:
    return value.isoformat()


def _iso(value: datetime) -> str:
    """ISO 8601 text of a date-time, memoised: the same instants recur in every record of a decision and in
    every decision explained by the same activation. Keyed by the offset and fold as well as the value:
    aware date-times of one instant in different offsets are equal (and hash alike) yet are written
    differently, and each must keep its own text."""
    return _iso_of(value, value.utcoffset(), value.fold)


def _expr(tp: Any, v: str, ns: dict[str, Any], depth: int) -> str:
    """Python source of an expression encoding the value named by ``v`` of type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            inner = _expr(members[0], v, ns, depth)
        elif all(dataclasses.is_dataclass(m) for m in members):
            ns["_tagged"] = _enc_tagged
            inner = f"_tagged({v})"
        else:
            raise TypeError(f"unsupported union {tp!r}")
        if inner == v or len(members) == len(args):
            return inner
        return f"(None if {v} is None else {inner})"
    if origin is tuple:
        x = f"x{depth}"
        if len(args) == 2 and args[1] is Ellipsis:
            inner = _expr(args[0], x, ns, depth + 1)
            return f"list({v})" if inner == x else f"[{inner} for {x} in {v}]"
        return "[" + ", ".join(_expr(a, f"{v}[{i}]", ns, depth + 1) for i, a in enumerate(args)) + "]"
    if origin is frozenset:
        x = f"x{depth}"
        return f"sorted([{_expr(args[0], x, ns, depth + 1)} for {x} in {v}])"
    if origin is typing.Literal:
        return v
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return f"{v}.value"
        if tp is datetime:
            ns["_iso"] = _iso
            return f"_iso({v})"
        if tp in (int, str, bool, float):
            return v
        if dataclasses.is_dataclass(tp):
            ns["_to_record"] = to_record
            return f"_to_record({v})"
    raise TypeError(f"unsupported field type {tp!r}")


def _encoder(cls: type) -> Callable[[Any], Record]:
    """Compile (once per class) a function building the record dict in one expression, the way
    ``dataclasses`` compiles ``__init__``: several times faster than walking a plan per value."""
    enc = _ENCODERS.get(cls)
    if enc is None:
        hints = typing.get_type_hints(cls)
        ns: dict[str, Any] = {}
        items = [
            f"{f.name!r}: {_expr(hints[f.name], 'o.' + f.name, ns, 0)}" for f in dataclasses.fields(cls) if f.init
        ]
        src = "def _enc(o):\n    return {" + ", ".join(items) + "}\n"
        exec(src, ns)
        enc = _ENCODERS[cls] = ns["_enc"]
    return enc


def to_record(obj: Any) -> Record:
    """JSON-ready dict of a dataclass instance (inverse of :func:`from_record`)."""
    enc = _ENCODERS.get(type(obj))
    if enc is None:
        enc = _encoder(type(obj))
    return enc(obj)


_DECODERS: dict[type, Callable[[Mapping[str, Any]], Any]] = {}
_ABSENT = object()
_EXACT = (str, int, float)  # types a record holds as they are (``type(v) is tp``: never a bool for an int)


def _fast(tp: Any, v: str, slow: str, ns: dict[str, Any], key: str) -> str | None:
    """Python source of an expression decoding ``v`` of type ``tp`` when it is exactly what a record holds for
    it, else calling ``slow`` (the plan's decoder, which decodes anything else or raises its named error);
    None when there is no such fast path."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) != 1 or len(members) == len(args):
            return None
        inner = _fast(members[0], v, slow, ns, key)
        return None if inner is None else f"(None if {v} is None else {inner})"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _EXACT:
        name = args[0].__name__
        return f"(tuple({v}) if type({v}) is list and all(type(x) is {name} for x in {v}) else {slow}({v}))"
    if isinstance(tp, type):
        if tp in _EXACT:
            return f"({v} if type({v}) is {tp.__name__} else {slow}({v}))"
        if tp is datetime:
            ns["_dt"] = _dec_dt
            return f"_dt({v})"
        if issubclass(tp, enum.Enum) and all(type(m.value) is str for m in tp):
            ns[key] = {m.value: m for m in tp}
            return f"({key}[{v}] if type({v}) is str and {v} in {key} else {slow}({v}))"
    return None


def _decoder(cls: type) -> Callable[[Mapping[str, Any]], Any]:
    """Compile (once per class) the function that rebuilds ``cls`` from a record: one straight line per
    field of its plan, without the walk. A value that is exactly what a record holds for its field (text for
    ``str``, an enum's text, a list of texts for ``tuple[str, ...]``) is taken inline; anything else goes to
    the plan's own decoder, so the checks and errors are those of the plan. A restart decodes one record per
    idempotency key kept: this is most of its time."""
    dec = _DECODERS.get(cls)
    if dec is None:
        ns: dict[str, Any] = {"_cls": cls, "_absent": _ABSENT, "_Err": EngineStateError}
        hints = typing.get_type_hints(cls)
        lines = ["def _dec(data):", "    get = data.get", "    kw = {}"]
        for i, (name, _, field_dec, required) in enumerate(_plan(cls)):
            ns[f"_d{i}"] = field_dec
            expr = _fast(hints[name], "v", f"_d{i}", ns, f"_m{i}") or f"_d{i}(v)"
            lines.append(f"    v = get({name!r}, _absent)")
            if required:
                lacks = f"{cls.__name__} record lacks {name!r}"
                lines += ["    if v is _absent:", f"        raise _Err({lacks!r})", f"    kw[{name!r}] = {expr}"]
            else:  # a record written before the field was added: its default
                lines += ["    if v is not _absent:", f"        kw[{name!r}] = {expr}"]
        lines.append("    return _cls(**kw)")
        exec("\n".join(lines) + "\n", ns)
        dec = _DECODERS[cls] = ns["_dec"]
    return dec


def from_record(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild a dataclass of type ``cls`` (or, for ``kind``-tagged data, a registered subclass)."""
    if not isinstance(data, Mapping):
        raise EngineStateError(f"{cls.__name__} record must be a mapping, got {type(data).__name__}")
    if "kind" in data and not dataclasses.is_dataclass(cls):
        return typing.cast(T, _dec_tagged(data))
    dec = _DECODERS.get(cls)
    if dec is None:
        dec = _decoder(cls)
    try:
        return typing.cast(T, dec(data))
    except (TypeError, ValueError) as exc:
        raise EngineStateError(f"bad {cls.__name__} record: {exc}") from exc


def decode_tagged(data: Mapping[str, Any]) -> Any:
    """Decode a ``kind``-tagged record to whichever registered class it names."""
    return _dec_tagged(data)
