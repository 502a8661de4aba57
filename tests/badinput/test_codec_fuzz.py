"""Mutation fuzzing of the two codecs: only named errors may escape.

* DUIS: mutated testkit messages and ``../shared/duis/samples`` go through ``decode`` (only
  :class:`gateway.errors.DuisgwError` subclasses may escape) and through the whole
  :class:`gateway.pipeline.Classifier` (never raises; a rejection has a named code).
* GBCS: mutated RTDS 4.5.0 vectors and testkit payloads go through ``parse_frame``,
  ``decode_payload`` and ``describe`` with the RTDS key store (only :class:`gbcs.errors.GbcsError`).
* Memory: a fixed-seed run of mutated inputs through the classifier, traced with ``tracemalloc``.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.duis.decode import decode
from gateway.duis.model import Request, Response, ResponseMessage
from gateway.errors import DuisgwError
from gateway.gbcs_keys import DirectoryKeyStore, load_keystore
from gateway.pipeline import Classifier
from gbcs.crypto import Verifier
from gbcs.errors import GbcsError
from gbcs.frame import parse_frame
from gbcs.payload import decode_payload
from gbcs.render import describe
from tests.badinput import tally
from tests.badinput.mutate import apply, apply_tree, mutations, random_ops, tree_mutations

NOW = datetime(2026, 3, 2, 9, 10, tzinfo=UTC)
RTDS_TIME = datetime(2020, 1, 1, tzinfo=UTC)
FUZZ = settings(
    max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def _duis_once(classifier: Classifier, data: bytes, suite: str) -> None:
    try:
        doc = decode(data)
    except DuisgwError as exc:
        assert exc.code and exc.code != "error", exc
        reason = exc.code
    except Exception:
        tally.CRASHES[suite] += 1
        raise
    else:
        assert isinstance(doc, Request | Response)
        reason = "decoded"
    c = classifier.classify("inline", data, NOW)  # must never raise
    if c.rejection is not None:
        assert c.rejection.code and c.rejection.code != "error"
    tally.count(suite, reason)


def _gbcs_once(keystore: DirectoryKeyStore | None, data: bytes, suite: str) -> None:
    try:
        frame = parse_frame(data)
        decode_payload(frame)
        describe(data, keystore, at=RTDS_TIME)
        if keystore is not None:
            Verifier(keystore).verify_signature(frame, RTDS_TIME)
    except GbcsError as exc:
        assert exc.code and exc.code != "gbcs_error", exc
        tally.count(suite, exc.code)
        return
    except Exception:
        tally.CRASHES[suite] += 1
        raise
    tally.count(suite, "decoded")


# ------------------------------------------------------------------ DUIS


@FUZZ
@given(data=st.data())
def test_mutated_testkit_messages_only_raise_named_duis_errors(
    classifier: Classifier, testkit_messages: list[bytes], data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(testkit_messages))
    _duis_once(classifier, apply(seed, data.draw(mutations())), "duis-decoder (testkit seeds)")


@FUZZ
@given(data=st.data())
def test_mutated_shared_samples_only_raise_named_duis_errors(
    classifier: Classifier, duis_samples: list[bytes], data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(duis_samples))
    _duis_once(classifier, apply(seed, data.draw(mutations())), "duis-decoder (shared samples)")


@FUZZ
@given(data=st.data())
def test_well_formed_structural_mutations_only_raise_named_duis_errors(
    classifier: Classifier, testkit_messages: list[bytes], data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(testkit_messages))
    _duis_once(classifier, apply_tree(seed, data.draw(tree_mutations())), "duis-decoder (tree mutations)")


@settings(max_examples=150, deadline=None, derandomize=True)
@given(blob=st.binary(max_size=2048))
def test_random_bytes_only_raise_named_duis_errors(classifier: Classifier, blob: bytes) -> None:
    _duis_once(classifier, blob, "duis-decoder (random bytes)")


@pytest.fixture(scope="session")
def duis_samples(shared: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((shared / "duis" / "samples").iterdir()) if p.is_file()]


# ------------------------------------------------------------------ GBCS


@pytest.fixture(scope="session")
def rtds_vectors(shared: Path) -> list[bytes]:
    return [
        bytes.fromhex(p.read_text().strip()) for p in sorted((shared / "gbcs" / "rtds-4.5.0").rglob("*.HEX"))
    ]


@pytest.fixture(scope="session")
def rtds_keystore(shared: Path) -> DirectoryKeyStore:
    return load_keystore(shared / "gbcs" / "rtds-keystore")


@pytest.fixture(scope="session")
def testkit_gbcs(testkit_messages: list[bytes]) -> list[bytes]:
    out = []
    for m in testkit_messages:
        doc = decode(m)
        payload = getattr(doc.body, "gbcs_payload", None)
        if isinstance(doc.body, ResponseMessage) and payload is None:
            payload = getattr(doc.body.payload, "gbcs_payload", None)
        if payload:
            out.append(payload)
    assert len(out) >= 4
    return out


@FUZZ
@given(data=st.data())
def test_mutated_rtds_vectors_only_raise_gbcs_errors(
    rtds_vectors: list[bytes], rtds_keystore: DirectoryKeyStore, data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(rtds_vectors))
    _gbcs_once(rtds_keystore, apply(seed, data.draw(mutations(4))), "gbcs-codec (RTDS vectors)")


@FUZZ
@given(data=st.data())
def test_mutated_testkit_gbcs_payloads_only_raise_gbcs_errors(
    testkit_gbcs: list[bytes], data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(testkit_gbcs))
    _gbcs_once(None, apply(seed, data.draw(mutations(4))), "gbcs-codec (testkit payloads)")


@settings(max_examples=150, deadline=None, derandomize=True)
@given(blob=st.binary(max_size=600))
def test_random_bytes_only_raise_gbcs_errors(blob: bytes) -> None:
    _gbcs_once(None, blob, "gbcs-codec (random bytes)")


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    head=st.sampled_from([b"\xdf", b"\xdd\x00\x00\x00\x00\x00\x00", b"\xdf\x09\x02"]),
    blob=st.binary(max_size=300),
)
def test_frames_with_a_valid_start_only_raise_gbcs_errors(head: bytes, blob: bytes) -> None:
    _gbcs_once(None, head + blob, "gbcs-codec (valid start, random rest)")


# ------------------------------------------------------------------ memory


def test_memory_stays_bounded_over_thousands_of_bad_inputs(
    classifier: Classifier, testkit_messages: list[bytes]
) -> None:
    rng = random.Random(20260302)
    n_warm, n_total = 300, 1500
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        warm = 0
        for i in range(n_total):
            body = apply(rng.choice(testkit_messages), random_ops(rng))
            classifier.classify("inline", body, NOW)
            if i == n_warm - 1:
                gc.collect()
                warm = tracemalloc.get_traced_memory()[0]
        gc.collect()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = end - warm
    tally.FIGURES["classifier: inputs traced"] = n_total
    tally.FIGURES["classifier: traced memory after warm-up (KiB)"] = round((warm - base) / 1024)
    tally.FIGURES[f"classifier: growth over the last {n_total - n_warm} inputs (KiB)"] = round(growth / 1024)
    tally.FIGURES["classifier: tracemalloc peak (KiB)"] = round((peak - base) / 1024)
    assert growth < 2 * 1024 * 1024, f"memory grew by {growth} bytes over {n_total - n_warm} inputs"


# ------------------------------------------------------------------ regressions found by the fuzzers

RELATIVE_NS_REQUEST = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<sr:Request xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway"'
    b' xmlns:xsi="http@//www.w3.org/2001/XMLSchema-instance" schemaVersion="5.0"><sr:Header>'
    b"<sr:RequestID>90-B3-D5-1F-30-01-00-00:00-07-81-D7-00-00-36-CE:1000</sr:RequestID>"
    b"<sr:CommandVariant>1</sr:CommandVariant><sr:ServiceReference>4.1</sr:ServiceReference>"
    b"<sr:ServiceReferenceVariant>4.1.1</sr:ServiceReferenceVariant></sr:Header>"
    b"<sr:Body><sr:ReadInstantaneousImportRegisters/></sr:Body></sr:Request>"
)


def test_relative_namespace_uri_in_an_unmodelled_body_is_a_named_error() -> None:
    with pytest.raises(DuisgwError):
        decode(RELATIVE_NS_REQUEST)


def test_relative_namespace_uri_on_a_signed_message_does_not_escape_the_classifier(
    classifier: Classifier, testkit_messages: list[bytes]
) -> None:
    signed = testkit_messages[4]  # an AD1: the XML signature path canonicalises the whole document
    body = signed.replace(b"<sr:Response ", b'<sr:Response xmlns:x="rel/ns" ', 1)
    assert body != signed
    c = classifier.classify("inline", body, NOW)
    assert c.rejection is not None or not c.verified



_COMPACT_ARRAY_PROBE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (800_000_000, 800_000_000))
from gbcs.errors import GbcsError
from gbcs.frame import build_general_signing, parse_frame
from gbcs.payload import decode_payload
content = bytes.fromhex(sys.argv[1])
frame = build_general_signing(cra=3, originator_counter=1, originator=0x00DB1234567890A0,
                              recipient=0x90B3D51F30020000, message_code=0x0067, content=content)
try:
    decode_payload(parse_frame(frame))
except GbcsError as exc:
    print("named:", exc.code)
"""


def test_compact_array_of_zero_width_values_is_a_named_error_quickly(project_root: Path) -> None:
    import subprocess
    import sys

    # Data-Notification, invoke id, no date-time, compact-array { type null-data } with 1 content byte
    content = "0f20000001" + "00" + "13" + "00" + "01" + "00"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _COMPACT_ARRAY_PROBE, content],
            cwd=project_root, capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("decode_payload did not finish in 20 s")
    assert proc.returncode == 0 and proc.stdout.startswith("named:"), proc.stderr[-300:]
