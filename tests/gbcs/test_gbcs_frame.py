"""Framing: named errors with offsets for truncated, trailing and inconsistent input; round trips and
fuzzing (random and mutated frames raise nothing but the codec's named errors)."""

from __future__ import annotations

import pytest
from conftest import RTDS_CHECK_TIME, VectorFn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.gbcs_keys import DirectoryKeyStore
from gbcs.crypto import Verifier
from gbcs.errors import (
    BadField,
    GbcsError,
    LengthMismatch,
    NotGbcs,
    TrailingBytes,
    Truncated,
    UnsupportedFrame,
)
from gbcs.frame import (
    CRA,
    SignatureField,
    build_general_signing,
    encode_length,
    parse_frame,
    read_length,
    wrap_mac_header,
)
from gbcs.payload import decode_payload
from gbcs.render import describe

SAMPLE = ["CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT", "CS06_11.3_IMMEDIATE_SUCCESS_COMMAND",
          "ECS68_NA_8F0A_SINGLE_ALERT", "GCS16a_4.6.1_SUCCESS_RESPONSE", "ECS17b_4.1.1_SINGLE_SUCCESS_RESPONSE",
          "CS06_11.3_IMMEDIATE_SUCCESS_PRECOMMAND"]


@pytest.mark.parametrize("name", SAMPLE)
def test_every_truncation_raises_a_named_error_with_an_offset(vector: VectorFn, name: str) -> None:
    raw = vector(name)
    full = parse_frame(raw)
    for cut in range(len(raw)):
        if cut == full.content_end and full.mac_header is None:
            # a DF frame cut right after its content is a well-formed unsigned (pre-command) APDU
            assert parse_frame(raw[:cut]).signature_field is SignatureField.ABSENT
            continue
        with pytest.raises(GbcsError) as exc:
            decode_payload(parse_frame(raw[:cut]))
        assert exc.value.offset is not None and 0 <= exc.value.offset <= cut, (cut, exc.value)
        assert exc.value.code.startswith("gbcs_")


def test_truncated_signature_field_says_truncated(vector: VectorFn) -> None:
    raw = vector("CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT")
    with pytest.raises(Truncated) as exc:
        parse_frame(raw[:-1])
    assert exc.value.offset == 74 and "signature" in exc.value.message


@pytest.mark.parametrize("name", ["CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT", "GNCA-DLMS_NA_810E_ALERT"])
def test_trailing_byte_is_rejected_with_its_offset(vector: VectorFn, name: str) -> None:
    raw = vector(name)
    with pytest.raises(TrailingBytes) as exc:
        parse_frame(raw + b"\x00")
    assert exc.value.offset == len(raw)


def test_mac_header_length_disagreeing_with_the_apdu_is_a_length_mismatch(vector: VectorFn) -> None:
    raw = bytearray(vector("GNCA-DLMS_NA_810E_ALERT"))
    assert raw[7] < 0x80
    # one extra byte inside the ciphered service, declared by the MAC header length
    bad = bytes(raw[:7]) + bytes([raw[7] + 1]) + bytes(raw[8:-12]) + b"\x00" + bytes(raw[-12:])
    with pytest.raises(LengthMismatch) as exc:
        parse_frame(bad)
    assert exc.value.code == "gbcs_length_mismatch" and exc.value.offset == len(raw) - 12


def test_content_length_inconsistent_with_the_frame_is_rejected(vector: VectorFn) -> None:
    raw = bytearray(vector("CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT"))
    raw[33] = 0x7F  # content length 0x27 -> 0x7F
    with pytest.raises(Truncated) as exc:
        parse_frame(bytes(raw))
    assert exc.value.offset == 33 and "content length 127" in exc.value.message


@pytest.mark.parametrize(
    ("data", "error", "offset"),
    [
        (b"", Truncated, 0),
        (b"\x30\x00", NotGbcs, 0),
        (b"\xdd\x09\x00", UnsupportedFrame, 1),
        (b"\xdd\x00\x00\x01\x00\x00\x00\x05", BadField, 3),
        (b"\xdf\x09\x04" + bytes(40), BadField, 2),
        (b"\xdf\x08\x01" + bytes(40), BadField, 1),
    ],
)
def test_bad_headers_name_the_field_and_offset(data: bytes, error: type[GbcsError], offset: int) -> None:
    with pytest.raises(error) as exc:
        parse_frame(data)
    assert exc.value.offset == offset
    assert str(exc.value).startswith(f"{error.code} at offset {offset}: ")


def test_ber_lengths_round_trip() -> None:
    for n in (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFF):
        enc = encode_length(n)
        assert read_length(enc, 0, len(enc), "x") == (n, len(enc))
    with pytest.raises(BadField):
        read_length(b"\x80", 0, 1, "x")


euis = st.integers(min_value=0, max_value=2**64 - 1)


@settings(max_examples=150, deadline=None)
@given(
    cra=st.sampled_from([1, 2, 3]),
    counter=euis,
    orig=euis,
    recip=euis,
    code=st.integers(0, 0xFFFF),
    content=st.binary(max_size=300),
    dt=st.none() | st.binary(min_size=12, max_size=12),
    supp=st.none() | st.tuples(euis, st.none() | euis, st.none() | euis),
    sig=st.sampled_from(["absent", "null", "present"]),
    mac=st.none() | st.binary(min_size=12, max_size=12),
)
def test_general_signing_round_trips(
    cra: int, counter: int, orig: int, recip: int, code: int, content: bytes, dt: bytes | None,
    supp: tuple[int, int | None, int | None] | None, sig: str, mac: bytes | None,
) -> None:
    rp, rp_ctr, o_ctr = supp if supp else (None, None, None)
    if rp_ctr is None:
        o_ctr = None
    apdu = build_general_signing(
        cra=cra, originator_counter=counter, originator=orig, recipient=recip, message_code=code, content=content,
        date_time=dt, supplementary_remote_party=rp, supplementary_remote_party_counter=rp_ctr,
        supplementary_originator_counter=o_ctr, signature=bytes(range(64)) if sig == "present" else None,
        null_signature=sig == "null",
    )
    raw = apdu if mac is None or sig == "absent" else wrap_mac_header(apdu, mac)
    f = parse_frame(raw)
    assert (f.cra, f.originator_counter, f.originator, f.recipient, f.message_code) == (CRA(cra), counter, orig, recip, code)
    assert f.content == content and f.date_time == dt
    assert (f.supplementary_remote_party, f.supplementary_remote_party_counter, f.supplementary_originator_counter) == (rp, rp_ctr, o_ctr)
    assert f.signature_field is {"absent": SignatureField.ABSENT, "null": SignatureField.NULL, "present": SignatureField.PRESENT}[sig]
    assert f.general_signing_apdu == apdu
    if raw is not apdu:
        assert f.mac == mac


def _never_raises_unnamed(data: bytes, keystore: DirectoryKeyStore | None = None) -> None:
    try:
        frame = parse_frame(data)
        decode_payload(frame)
        if keystore is not None:
            describe(data, keystore, at=RTDS_CHECK_TIME)
            v = Verifier(keystore)
            v.verify_signature(frame, RTDS_CHECK_TIME)
    except GbcsError as e:
        assert e.code.startswith("gbcs_") and e.offset is not None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"\xdf\x09", b"\xdd\x00\x00\x00\x00\x00\x00", b""]), st.binary(max_size=200))
def test_random_bytes_raise_only_named_errors(prefix: bytes, body: bytes) -> None:
    _never_raises_unnamed(prefix + body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_rtds_frames_raise_only_named_errors(vectors: dict[str, bytes], keystore: DirectoryKeyStore, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(vectors)))
    raw = bytearray(vectors[name])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "set" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=3))
        elif op == "delete" and raw:
            del raw[pos]
        else:
            del raw[pos:]
    _never_raises_unnamed(bytes(raw), keystore)
