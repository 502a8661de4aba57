"""Conformance against the RTDS 4.5.0 vectors: every vector decodes; signatures, MACs and encrypted
blocks check out wherever the key store holds what is needed, and are 'unverifiable' otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RTDS_CHECK_TIME, VectorFn

from gateway.duis.decode import decode
from gateway.duis.model import ActivateFirmware, Request, SignedPreCommand
from gateway.gbcs_keys import DirectoryKeyStore
from gateway.pipeline import _signed_command_mismatch
from gbcs.crypto import Status, ValidityPolicy, Verifier
from gbcs.frame import SignatureField, parse_frame
from gbcs.payload import decode_payload
from gbcs.render import describe, to_text


def test_corpus_is_present_and_large(vectors: dict[str, bytes]) -> None:
    # GBCS.md counts 1275 messages; the copy under ../shared holds 1036 files of one message each.
    assert len(vectors) >= 1000


def test_every_rtds_vector_parses_and_its_payload_decodes(vectors: dict[str, bytes]) -> None:
    families: dict[str, int] = {}
    for name, raw in vectors.items():
        frame = parse_frame(raw)
        payload = decode_payload(frame)
        families[payload.family] = families.get(payload.family, 0) + 1
        assert frame.raw == raw, name
    assert set(families) == {"DLMS", "GBZ", "ASN.1"}


def test_every_signed_vector_verifies_against_the_rtds_keystore(vectors: dict[str, bytes], keystore: DirectoryKeyStore) -> None:
    v = Verifier(keystore, acb_eui=keystore.acb_eui)
    signed = 0
    for name, raw in vectors.items():
        frame = parse_frame(raw)
        check = v.verify_signature(frame, RTDS_CHECK_TIME)
        if frame.signature_field is SignatureField.PRESENT:
            signed += 1
            assert check.status is Status.VALID, (name, check.reason)
            assert check.key_eui == frame.originator
        else:
            assert check.status is Status.NOT_PRESENT
    assert signed >= 300


def test_macs_verify_where_a_private_key_is_held_and_are_unverifiable_otherwise(
    vectors: dict[str, bytes], keystore: DirectoryKeyStore
) -> None:
    v = Verifier(keystore, acb_eui=keystore.acb_eui)
    counts = {s: 0 for s in Status}
    for name, raw in vectors.items():
        frame = parse_frame(raw)
        check = v.verify_mac(frame, RTDS_CHECK_TIME)
        counts[check.status] += 1
        assert check.status is not Status.INVALID, (name, check.reason)
        if check.status is Status.UNVERIFIABLE:
            # only the PPMID<->GSME messages, MAC'd between two device KA keys (no device private keys held)
            assert name.startswith(("PCS01", "PCS02")), (name, check.reason)
            assert "no KA private key" in check.reason
    assert counts[Status.VALID] >= 600
    assert counts[Status.UNVERIFIABLE] == 4


def test_every_encrypted_block_decrypts_and_authenticates(vectors: dict[str, bytes], keystore: DirectoryKeyStore) -> None:
    v = Verifier(keystore)
    blocks = 0
    for name, raw in vectors.items():
        frame = parse_frame(raw)
        payload = decode_payload(frame)
        for d in v.decrypt(frame, payload.encrypted_blocks, RTDS_CHECK_TIME):
            blocks += 1
            assert d.check.status is Status.VALID, (name, d.check.reason)
            assert d.plaintext is not None and len(d.plaintext) == d.block.length - 5 - 12
    assert blocks >= 40


def test_command_macs_are_unverifiable_without_the_acb_eui(vector: VectorFn, keystore: DirectoryKeyStore) -> None:
    frame = parse_frame(vector("CS06_11.3_IMMEDIATE_SUCCESS_COMMAND"))
    check = Verifier(keystore).verify_mac(frame, RTDS_CHECK_TIME)
    assert check.status is Status.UNVERIFIABLE
    assert "Access Control Broker" in check.reason
    assert Verifier(keystore, acb_eui=keystore.acb_eui).verify_mac(frame, RTDS_CHECK_TIME).ok


@pytest.mark.parametrize("step", [7])
def test_describe_renders_every_nth_vector_as_json_and_text(vectors: dict[str, bytes], keystore: DirectoryKeyStore, step: int) -> None:
    for name in sorted(vectors)[::step]:
        d = describe(vectors[name], keystore, at=RTDS_CHECK_TIME)
        json.dumps(d)
        text = to_text(d)
        assert "message_code_name" in text, name
        ver = d["verification"]
        assert isinstance(ver, dict)
        assert ver["signature"]["status"] in ("valid", "not present"), name


def test_ignore_policy_verifies_rtds_without_a_time(vector: VectorFn, keystore: DirectoryKeyStore) -> None:
    frame = parse_frame(vector("CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT"))
    check = Verifier(keystore, policy=ValidityPolicy.IGNORE).verify_signature(frame)
    assert check.ok and "validity not checked" in check.reason


CS06_SCENARIOS = ("IMMEDIATE_SUCCESS", "FUTURE_DATED_SUCCESS", "CANCELLATION_SUCCESS")


@pytest.mark.parametrize("request_of", CS06_SCENARIOS)
@pytest.mark.parametrize("command_of", CS06_SCENARIOS)
def test_a_signed_cs06_command_agrees_with_its_own_duis_request_and_no_other(
    shared: Path, vector: VectorFn, request_of: str, command_of: str
) -> None:
    """Ground truth for the CV5 check: the DUIS 11.3 templates' ExecutionDateTime (absent,
    2030-01-15T09:00:00.00Z, the sentinel 3000-12-31) against the RTDS supplier-signed CS06 commands
    (no executionDateTime, 20300115090000Z, 99991231235959Z) of the same scenario agree, and any
    other pairing is a mismatch."""
    template = shared / "duis" / "templates" / f"CS06_11.3_{request_of}_REQUEST_DUIS.XML"
    doc = decode(template.read_bytes())
    assert isinstance(doc, Request) and isinstance(doc.body, ActivateFirmware)
    frame = parse_frame(vector(f"CS06_11.3_{command_of}_COMMAND"))
    assert frame.originator_counter == doc.header.request_id.counter or request_of != command_of
    problem = _signed_command_mismatch(frame, SignedPreCommand(frame.raw, doc.body.execution_datetime))
    if request_of == command_of:
        assert problem is None
    else:
        assert problem is not None and problem.startswith("gbcs-mismatch:signed pre-command executes")
