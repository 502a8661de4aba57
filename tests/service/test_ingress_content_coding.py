"""A body in a content coding the ingress does not decode is refused (RFC 9110 §8.4.1: 415), never taken as
plain bytes. aiohttp decodes ``gzip`` and ``deflate`` only (the value of one ``Content-Encoding`` line, trimmed
and lower-cased, exactly one of them) and took any other coding undecoded: ``compress`` or ``x-foo`` bytes,
``gzip, deflate`` stacked, ``identity, gzip``, were classified and forwarded as if they were the document.
Now each is 415 ``unsupported_content_encoding``, its bytes kept as received in the rejects table, counted
in ``duisgw_rejects_total`` and ``duisgw_http_requests_total``, logged once, and neither classified nor
forwarded; ``identity`` (any case, spacing, or an empty value) and gzip and deflate are taken as before. In
both layouts: the ingress in the gateway process and in ingress worker processes (whose counts and rejects
the gateway process exports). The requests are raw bytes over a socket, so that every header goes as written
(``Connection: close``: the gateway closes the connection after its answer).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import pytest
from servicekit import Receiver, duis_body, running
from test_ingress_framing_errors import (
    INLINE,
    LAYOUTS,
    answers,
    eventually,
    exchange,
    gateway,
    problems_logged,
    raw_post,
    scrape,
    warnings_logged,
)

OBSERVE = "/duis/observe"
CLOSE = ("Connection", "close")

#: Content-Encoding header lines, and the coding of the body under them: none of them is one the ingress takes
#: (``decoded``: aiohttp decodes the body as gzip by one of the lines, so its bytes as received are gone)
REFUSED: dict[str, tuple[list[str], object]] = {
    "compress": (["compress"], None),
    "x-foo": (["x-foo"], None),
    "identity-then-foo": (["identity, foo"], None),
    "gzip-then-deflate-stacked": (["gzip, deflate"], "gzip+deflate"),
    "identity-then-gzip": (["identity, gzip"], "gzip"),
    "x-gzip": (["x-gzip"], "gzip"),
    "two-lines-identity-and-x-foo": (["identity", "x-foo"], None),
    "two-lines-gzip-and-gzip": (["gzip", "gzip"], "decoded"),
}


def coded(doc: bytes, coding: object) -> bytes:
    if coding in ("gzip", "decoded"):
        return gzip.compress(doc)
    if coding == "gzip+deflate":
        return zlib.compress(gzip.compress(doc))
    if coding == "deflate":
        return zlib.compress(doc)
    return doc


@LAYOUTS
async def test_a_body_in_a_content_coding_the_ingress_does_not_decode_is_a_kept_counted_415_never_classified(
    tmp_path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    ingress_processes: int,
) -> None:
    caplog.set_level(logging.INFO)
    service = gateway(tmp_path, receiver, ingress_processes)
    sent: list[tuple[str, str, bytes]] = []  # (lane, case, body as sent)
    async with running(service):
        n = 0
        for path, lane in ((INLINE, "inline"), (OBSERVE, "observe")):
            for case, (lines, coding) in REFUSED.items():
                n += 1
                body = coded(duis_body(n, pad=300), coding)
                extra = [CLOSE, *(("Content-Encoding", v) for v in lines)]
                got = answers(await exchange(service.port, raw_post(path.encode(), body, extra)))
                assert len(got) == 1, (case, got)
                status, text = got[0]
                assert status == 415, (case, text)
                assert text.startswith(b"unsupported_content_encoding: ") and text.endswith(b"\n"), (
                    case,
                    text,
                )
                assert text.count(b"\n") == 1
                sent.append((lane, case, body))
        total = len(sent)

        def counted(m: dict[str, dict[tuple[str, ...], float]]) -> bool:
            rejects = m.get("duisgw_rejects_total", {})
            return (
                sum(rejects.get((lane, "unsupported_content_encoding"), 0) for lane in ("inline", "observe"))
                == total
            )

        metrics = await eventually(lambda: scrape(service), counted)
        assert metrics["duisgw_rejects_total"] == {
            ("inline", "unsupported_content_encoding"): len(REFUSED),
            ("observe", "unsupported_content_encoding"): len(REFUSED),
        }
        assert metrics["duisgw_http_requests_total"] == {
            ("inline", "415"): len(REFUSED),
            ("observe", "415"): len(REFUSED),
        }
        assert not any(v for v in metrics.get("duisgw_messages_total", {}).values())  # nothing classified

        rows = await eventually(service.rejects.all, lambda rs: len(rs) >= total)
        assert len(rows) == total
        for row, (lane, case, body) in zip(rows, sent, strict=True):
            assert (row["lane"], row["reason"]) == (lane, "unsupported_content_encoding"), case
            assert row["user"] == ("dno-a" if lane == "inline" else None)
            lines, coding = REFUSED[case]
            assert all(v in row["detail"] for v in lines), (case, row["detail"])
            if coding == "decoded":  # aiohttp decoded it (one of the lines is gzip): not the bytes received
                assert row["body"] == b"" and "decoded as gzip" in row["detail"], (case, row)
            else:
                assert row["body"] == body, case  # the bytes as received
    err = capfd.readouterr().err
    assert problems_logged(caplog, err) == []
    assert warnings_logged(caplog, err, "unsupported_content_encoding", logging.INFO) == total  # once each
    assert not receiver.log  # nothing forwarded


#: Content-Encoding header lines the ingress takes, and the coding of the body under them
TAKEN: dict[str, tuple[list[str], str | None]] = {
    "identity": (["identity"], None),
    "IDENTITY-spaced": (["  IDENTITY \t"], None),
    "Identity-twice": (["Identity, identity"], None),
    "empty-value": ([""], None),
    "gzip": (["gzip"], "gzip"),
    "GZIP-spaced": ([" GZIP "], "gzip"),
    "deflate": (["deflate"], "deflate"),
}


@LAYOUTS
async def test_identity_an_empty_coding_gzip_and_deflate_bodies_are_still_taken(
    tmp_path: Path, receiver: Receiver, ingress_processes: int
) -> None:
    service = gateway(tmp_path, receiver, ingress_processes)
    docs = []
    async with running(service):
        for n, (case, (lines, coding)) in enumerate(TAKEN.items(), start=100):
            doc = duis_body(n, pad=300)
            extra = [CLOSE, *(("Content-Encoding", v) for v in lines)]
            got = answers(await exchange(service.port, raw_post(INLINE.encode(), coded(doc, coding), extra)))
            assert [s for s, _ in got] == [204], (case, got)  # (passthrough: forwarded)
            docs.append(doc)
        await receiver.wait_for(len(docs))
        assert [r.body for r in receiver.log] == docs  # the documents, decoded
        assert await service.rejects.all() == []
        metrics = await scrape(service)
        assert not metrics.get("duisgw_rejects_total")
