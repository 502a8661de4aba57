"""The sans-I/O parts of the capture reader: HTTP framing (llhttp through httptools, and what
the parser adds around it)
and TCP reassembly."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.capture.http import HttpProblem, HttpRequest, HttpResponse, HttpStreamParser
from gateway.capture.tcp import TcpStream, seq_diff

XML = b'<sr:Request xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway"/>'


def req(body: bytes = XML, path: str = "/duis/observe", extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/xml\r\n{extra}"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def chunked(body: bytes, size: int) -> bytes:
    head = b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    parts = [
        b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return head + b"".join(parts) + b"0\r\nX-Trailer: 1\r\n\r\n"


def feed_all(p: HttpStreamParser, stream: bytes, cuts: list[int]) -> list[object]:
    events: list[object] = []
    last = 0
    for n, c in enumerate([*sorted(set(cuts)), len(stream)]):
        if c > last:
            events += p.feed(stream[last:c], n)
            last = c
    return events


# -- HTTP -------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    bodies=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=4),
    chunk=st.integers(1, 50),
    data=st.data(),
)
def test_requests_are_framed_the_same_however_the_stream_is_cut(
    bodies: list[bytes], chunk: int, data: st.DataObject
) -> None:
    stream = b"".join(chunked(b, chunk) if i % 2 else req(b) for i, b in enumerate(bodies))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    events = feed_all(HttpStreamParser("request"), stream, cuts)
    assert all(isinstance(e, HttpRequest) for e in events)
    assert [e.body for e in events if isinstance(e, HttpRequest)] == bodies
    ends = [e.end for e in events if isinstance(e, HttpRequest)]
    assert ends[-1] == len(stream)


def test_first_byte_time_is_that_of_the_packet_holding_the_first_byte() -> None:
    a, b = req(b"<x/>"), req(b"<y/>")
    p2 = HttpStreamParser("request")
    first = p2.feed(a + b[:10], 100)
    second = p2.feed(b[10:], 200)
    assert [(e.first_ts, e.last_ts) for e in first + second if isinstance(e, HttpRequest)] == [
        (100, 100),
        (100, 200),
    ]


def test_both_transfer_encoding_and_content_length_is_ambiguous_framing() -> None:
    p = HttpStreamParser("request")
    events = p.feed(req(extra="Transfer-Encoding: chunked\r\n") + req(), 1)
    assert len(events) == 1 and isinstance(events[0], HttpProblem)
    assert events[0].code == "ambiguous-framing" and p.dead


def test_obsolete_header_folding_is_rejected() -> None:
    events = HttpStreamParser("request").feed(b"POST /duis/observe HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["bad-message"]


def test_conflicting_content_lengths_are_rejected() -> None:
    events = HttpStreamParser("request").feed(req(extra="Content-Length: 3\r\n"), 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["ambiguous-framing"]


def test_bad_chunk_size_line_ends_the_stream() -> None:
    bad = (
        b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    )
    events = HttpStreamParser("request").feed(bad + req(), 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["bad-chunk"]


def test_random_bytes_are_not_http_quickly() -> None:
    p = HttpStreamParser("request")
    events = p.feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 4, 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["not-http"]


def test_oversize_body_is_skipped_but_the_next_request_is_still_framed() -> None:
    p = HttpStreamParser("request", max_body=100)
    events = p.feed(req(b"<" + b"a" * 500 + b">") + req(), 1)
    assert [(e.oversize, len(e.body)) for e in events if isinstance(e, HttpRequest)] == [
        (True, 0),
        (False, len(XML)),
    ]


def test_head_larger_than_the_limit_is_reported() -> None:
    p = HttpStreamParser("request", max_head=200)
    events = p.feed(b"POST /duis/observe HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 300 + b"\r\n", 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["head-too-large"]


def test_gap_inside_a_request_damages_it_and_stops_the_stream() -> None:
    p = HttpStreamParser("request")
    stream = req() + req()
    assert p.feed(stream[:40], 1) == []
    gap = p.gap(10, 2)
    assert [(e.code, e.in_message) for e in gap if isinstance(e, HttpProblem)] == [("gap", True)]
    assert p.feed(stream[50:], 3) == [] and p.dead


def test_end_inside_a_request_reports_it_incomplete() -> None:
    p = HttpStreamParser("request")
    p.feed(req()[:-5], 1)
    assert [e.code for e in p.end(2) if isinstance(e, HttpProblem)] == ["incomplete"]


def test_responses_skip_interim_and_frame_head_chunked_and_close_delimited_bodies() -> None:
    p = HttpStreamParser("response")
    for m in ("POST", "HEAD", "POST", "POST"):
        p.expect_response_to(m)
    stream = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"  # HEAD: no body despite the length
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        b"HTTP/1.1 503 Service Unavailable\r\n\r\nuntil the end"
    )
    events = feed_all(p, stream, [7, 30, 31, 120])
    events += p.end(9)
    assert [e.status for e in events if isinstance(e, HttpResponse)] == [204, 200, 400, 503]
    assert not [e for e in events if isinstance(e, HttpProblem)]


def test_midstream_pickup_skips_to_the_next_request_line() -> None:
    p = HttpStreamParser("request")
    p.midstream()
    events = p.feed(b"tail of an earlier body</x>" + req(), 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["resync"]
    assert [e.body for e in events if isinstance(e, HttpRequest)] == [XML]


def test_obsolete_line_folding_is_refused_and_named_as_such() -> None:
    folded = b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nX-A: one\r\n\ttwo\r\nContent-Length: 0\r\n\r\n"
    p = HttpStreamParser("request")
    events = p.feed(folded + req(), 1)
    assert [(e.code, e.detail) for e in events if isinstance(e, HttpProblem)] == [
        ("bad-message", "obsolete header line folding")
    ]
    assert p.dead and not [e for e in events if isinstance(e, HttpRequest)]


def test_a_request_without_host_is_a_bad_message() -> None:
    events = HttpStreamParser("request").feed(b"POST /duis/observe HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["bad-message"]


def test_unsupported_transfer_coding_and_bad_content_length_are_refused() -> None:
    gzip = HttpStreamParser("request").feed(
        b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\n\r\n", 1
    )
    bad_length = HttpStreamParser("request").feed(
        b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nContent-Length: 1x\r\n\r\n", 1
    )
    assert [e.code for e in gzip if isinstance(e, HttpProblem)] == ["bad-message"]
    assert [e.code for e in bad_length if isinstance(e, HttpProblem)] == ["ambiguous-framing"]


def test_chunk_data_not_followed_by_crlf_is_a_bad_chunk() -> None:
    bad = (
        b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"
    )
    events = HttpStreamParser("request").feed(bad, 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["bad-chunk"]


def test_head_over_the_limit_is_refused_even_when_it_arrives_in_one_piece() -> None:
    p = HttpStreamParser("request", max_head=200)
    events = p.feed(req(extra="X-Pad: " + "a" * 300 + "\r\n"), 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["head-too-large"] and p.dead


def test_empty_lines_before_requests_are_skipped_with_exact_offsets_and_times() -> None:
    a, b, c = req(b"<a/>"), req(b"<b/>"), req(b"<c/>")
    p = HttpStreamParser("request")
    events = p.feed(b"\r\n" + a + b"\r\n\r\n" + b + b"\r", 1)  # CR of an empty line ends the packet
    events += p.feed(b"\n" + c, 2)
    got = [(e.body, e.start, e.end, e.first_ts, e.last_ts) for e in events if isinstance(e, HttpRequest)]
    sa, sb = 2, 2 + len(a) + 4
    sc = sb + len(b) + 2
    assert got == [
        (b"<a/>", sa, sa + len(a), 1, 1),
        (b"<b/>", sb, sb + len(b), 1, 1),
        (b"<c/>", sc, sc + len(c), 2, 2),
    ]


def test_bytes_after_a_request_that_closes_the_connection_are_refused() -> None:
    p = HttpStreamParser("request")
    events = p.feed(req(extra="Connection: close\r\n") + req(), 1)
    assert [type(e).__name__ for e in events] == ["HttpRequest", "HttpProblem"]
    problem = events[1]
    assert isinstance(problem, HttpProblem) and problem.code == "bad-message" and p.dead


def test_a_large_pipelined_delivery_is_framed_with_contiguous_offsets() -> None:
    bodies = [b"<m>%d</m>" % i + b"x" * (i % 700) for i in range(600)]
    stream = b"".join(req(b) for b in bodies)
    assert len(stream) > 200_000  # many segments, many messages in one delivery
    events = HttpStreamParser("request").feed(stream, 7)
    reqs = [e for e in events if isinstance(e, HttpRequest)]
    assert [r.body for r in reqs] == bodies and len(reqs) == len(events)
    assert reqs[0].start == 0 and reqs[-1].end == len(stream)
    assert all(x.end == y.start for x, y in pairwise(reqs))


def test_a_101_response_ends_the_response_stream_as_an_upgrade() -> None:
    asked = HttpStreamParser("response")
    asked.expect_response_to("GET", upgrade=True)
    events = asked.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello", 1)
    assert [e.status for e in events if isinstance(e, HttpResponse)] == [101]
    assert [(e.code, e.in_message) for e in events if isinstance(e, HttpProblem)] == [("upgrade", False)]
    unasked = HttpStreamParser("response")
    unasked.expect_response_to("POST")
    events = unasked.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["upgrade"] and unasked.dead


def test_end_inside_a_response_body_is_incomplete_but_a_close_delimited_body_is_not() -> None:
    cut = HttpStreamParser("response")
    cut.expect_response_to("POST")
    head = cut.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 1)
    assert [e.status for e in head if isinstance(e, HttpResponse)] == [200] and len(head) == 1
    assert [e.code for e in cut.end(2) if isinstance(e, HttpProblem)] == ["incomplete"]
    until_close = HttpStreamParser("response")
    until_close.feed(b"HTTP/1.1 200 OK\r\n\r\nall of it", 1)
    assert until_close.end(2) == []


def test_final_response_after_an_interim_one_is_checked_and_placed_on_its_own() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    ok = HttpStreamParser("response")
    ok.expect_response_to("POST")
    events = ok.feed(interim, 1) + ok.feed(b"HTTP/1.1 204 No Content\r\n\r\n", 2)
    assert [(e.status, e.start, e.first_ts) for e in events if isinstance(e, HttpResponse)] == [
        (204, len(interim), 2)
    ]
    folded = HttpStreamParser("response")
    folded.expect_response_to("POST")
    events = folded.feed(interim + b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", 1)
    assert [(e.code, e.offset) for e in events if isinstance(e, HttpProblem)] == [
        ("bad-message", len(interim))
    ]


def test_response_stream_that_is_not_http_is_refused_at_once() -> None:
    p = HttpStreamParser("response")
    p.expect_response_to("POST")
    assert [e.code for e in p.feed(b"SSH-2.0-OpenSSH_9.6\r\n", 1) if isinstance(e, HttpProblem)] == [
        "not-http"
    ]


@settings(max_examples=40, deadline=None)
@given(
    bodies=st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=4),
    blank=st.lists(st.sampled_from([b"", b"\r\n", b"\n", b"\r\n\r\n"]), min_size=4, max_size=4),
    data=st.data(),
)
def test_empty_lines_between_requests_do_not_change_what_is_framed(
    bodies: list[bytes], blank: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(blank[i] + req(b) for i, b in enumerate(bodies))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    events = feed_all(HttpStreamParser("request"), stream, cuts)
    assert [e.body for e in events if isinstance(e, HttpRequest)] == bodies
    assert [stream[e.start : e.end] for e in events if isinstance(e, HttpRequest)] == [req(b) for b in bodies]


def test_a_head_split_across_chunks_anywhere_in_its_blank_line_is_framed() -> None:
    stream = req(b"<a/>") + req(b"<b/>")
    head_end = stream.index(b"\r\n\r\n") + 4
    for cut in range(head_end - 4, head_end + 1):
        p = HttpStreamParser("request")
        events = p.feed(stream[:cut], 1) + p.feed(stream[cut:], 2)
        got = [(e.body, e.start, e.end) for e in events if isinstance(e, HttpRequest)]
        assert got == [(b"<a/>", 0, len(req(b"<a/>"))), (b"<b/>", len(req(b"<a/>")), len(stream))]


def test_a_head_response_without_length_is_followed_by_the_next_response() -> None:
    p = HttpStreamParser("response")
    for m in ("HEAD", "HEAD", "POST"):
        p.expect_response_to(m)
    stream = (
        b"HTTP/1.1 200 OK\r\n\r\n"  # no length: would be close-delimited but for HEAD
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    events = p.feed(stream, 1)
    assert [(e.status, e.start) for e in events if isinstance(e, HttpResponse)] == [
        (200, 0),
        (200, 19),
        (204, 66),
    ]
    assert p.end(2) == []


def test_requests_after_an_upgrade_request_are_still_framed_with_its_body() -> None:
    upgrade = (
        b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 4\r\n\r\n<u/>"
    )
    websocket = b"GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    stream = upgrade + websocket + req()
    events = feed_all(HttpStreamParser("request"), stream, [len(upgrade) - 2])
    got = [(e.method, e.body, e.start, e.end) for e in events if isinstance(e, HttpRequest)]
    assert got == [
        ("POST", b"<u/>", 0, len(upgrade)),
        ("GET", b"", len(upgrade), len(upgrade) + len(websocket)),
        ("POST", XML, len(upgrade) + len(websocket), len(stream)),
    ]


def test_transfer_codings_other_than_chunked_alone_are_refused_in_both_directions() -> None:
    listed = HttpStreamParser("request").feed(
        b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 1
    )
    response = HttpStreamParser("response")
    response.expect_response_to("POST")
    gzip = response.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz", 1)
    assert [e.code for e in listed if isinstance(e, HttpProblem)] == ["bad-message"]
    assert [e.code for e in gzip if isinstance(e, HttpProblem)] == ["bad-message"] and response.dead


def test_a_repeated_content_length_is_ambiguous_even_when_equal() -> None:
    events = HttpStreamParser("request").feed(req(b"abc", extra="Content-Length: 3\r\n"), 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["ambiguous-framing"]


def test_a_bad_start_line_is_not_http_first_and_a_bad_message_later() -> None:
    first = HttpStreamParser("request").feed(b"BREW /pot HTTP/1.1\r\nHost: gw\r\n\r\n", 1)
    later = HttpStreamParser("request").feed(req() + b"POST /x HTTP/9\r\n\r\n", 1)
    bare_lf = HttpStreamParser("request").feed(b"POST /x HTTP/1.1\nHost: gw\n\n", 1)
    assert [e.code for e in first if isinstance(e, HttpProblem)] == ["not-http"]
    assert [type(e).__name__ for e in later] == ["HttpRequest", "HttpProblem"]
    assert [e.code for e in later if isinstance(e, HttpProblem)] == ["bad-message"]
    assert [e.code for e in bare_lf if isinstance(e, HttpProblem)] == ["not-http"]


def test_a_header_error_in_the_first_message_is_a_bad_message_not_a_foreign_protocol() -> None:
    events = HttpStreamParser("request").feed(b"POST /x HTTP/1.1\r\nHost: gw\r\nBad Name: 1\r\n\r\n", 1)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["bad-message"]


def test_a_keep_alive_http_1_0_request_may_be_followed_but_a_plain_one_may_not() -> None:
    plain = b"POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
    kept = b"POST /x HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    events = HttpStreamParser("request").feed(kept + plain + plain, 1)
    assert [type(e).__name__ for e in events] == ["HttpRequest", "HttpRequest", "HttpProblem"]


def test_a_chunk_extension_or_trailer_line_over_the_head_limit_is_a_bad_chunk() -> None:
    head = b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    long_ext = HttpStreamParser("request", max_head=300)
    events = long_ext.feed(head + b"3;x=" + b"a" * 200, 1) + long_ext.feed(b"a" * 200, 2)
    assert [e.code for e in events if isinstance(e, HttpProblem)] == ["bad-chunk"]
    big_chunk = HttpStreamParser("request", max_head=300)
    data = b"z" * 1000  # chunk data without a line end is not a line
    events = big_chunk.feed(head + b"3e8\r\n" + data[:500], 1) + big_chunk.feed(
        data[500:] + b"\r\n0\r\n\r\n", 2
    )
    assert [e.body for e in events if isinstance(e, HttpRequest)] == [data]


def test_requests_waiting_for_responses_cost_a_pointer_each_on_the_response_side() -> None:
    # A capture without the server's packets: every request is announced to the response
    # parser (up to 1,024), none is answered.
    import tracemalloc

    p = HttpStreamParser("response")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(1000):
        p.expect_response_to("POST" if i % 3 else "HEAD", upgrade=i % 7 == 0)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 16_000  # 1,000 pointers and the deque's blocks; a tuple each was 64 KB


# -- what the gateway's HTTP server (aiohttp) refuses or decodes beyond llhttp ------------------
def test_a_request_repeating_a_single_value_header_is_refused_in_any_version() -> None:
    # aiohttp answers 400 and closes: the request and those after it are never handled.
    for head in ("Content-Type: text/plain\r\n", "User-Agent: a\r\nUser-Agent: b\r\n"):
        p = HttpStreamParser("request")
        events = p.feed(req(extra=head) + req(), 1)
        assert [e.code for e in events] == ["bad-message"] and p.dead
    p = HttpStreamParser("request")
    events = p.feed(req().replace(b"HTTP/1.1\r\nHost: gw", b"HTTP/1.0\r\nHost: gw\r\nHost: gw2"), 1)
    assert [(e.code, "Host" in e.detail) for e in events if isinstance(e, HttpProblem)] == [("bad-message", True)]


def test_a_response_may_repeat_a_header() -> None:
    p = HttpStreamParser("response")
    p.expect_response_to("POST")
    events = p.feed(b"HTTP/1.1 204 No Content\r\nServer: a\r\nServer: b\r\n\r\n", 1)
    assert [type(e) for e in events] == [HttpResponse]


def test_a_request_target_the_gateway_refuses_ends_the_stream() -> None:
    for target in ("*", "http:/duis/observe", "http://", "duis/observe"):
        p = HttpStreamParser("request")
        events = p.feed(req(path=target) + req(), 1)
        assert [e.code for e in events] in (["bad-message"], ["not-http"]) and p.dead, target
    events = HttpStreamParser("request").feed(
        b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n" + req(), 1
    )
    assert [type(e) for e in events] == [HttpRequest, HttpRequest]


def test_what_follows_a_connect_head_is_the_next_request_not_its_body() -> None:
    # CONNECT has no body: aiohttp takes what follows as the tunnel or, declined, as HTTP.
    connect = b"CONNECT gw:443 HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(req())
    events = HttpStreamParser("request").feed(connect + req(), 1)
    assert [(type(e), getattr(e, "body", None)) for e in events] == [(HttpRequest, b""), (HttpRequest, XML)]


@settings(max_examples=40, deadline=None)
@given(
    coding=st.sampled_from(["gzip", "GZIP", "deflate", "deflate-raw"]),
    members=st.integers(1, 3),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_a_gzip_or_deflate_body_is_decoded_as_the_gateway_reads_it(coding: str, members: int, cuts: list[int]) -> None:
    import gzip
    import zlib

    def enc(b: bytes) -> bytes:
        if coding == "deflate":
            return zlib.compress(b)
        if coding == "deflate-raw":
            c = zlib.compressobj(wbits=-15)
            return c.compress(b) + c.flush()
        return gzip.compress(b)

    body = b"".join(enc(XML) for _ in range(members))
    name = "deflate" if coding == "deflate-raw" else coding
    stream = req(body, extra=f"Content-Encoding: {name}\r\n") + req()
    events = feed_all(HttpStreamParser("request"), stream, cuts)
    assert [(e.body, e.encoding_error) for e in events if isinstance(e, HttpRequest)] == [
        (XML * members, None),
        (XML, None),
    ]


def test_a_body_that_does_not_decode_or_decodes_too_large_is_marked_and_the_stream_goes_on() -> None:
    import gzip

    bad = req(b"\x1f\x8bnot gzip", extra="Content-Encoding: gzip\r\n")
    trailing = req(gzip.compress(XML) + b"junk", extra="Content-Encoding: gzip\r\n")
    bomb = req(gzip.compress(b"<" + b" " * 5000), extra="Content-Encoding: gzip\r\n")
    events = HttpStreamParser("request", max_body=1000).feed(bad + trailing + bomb + req(), 1)
    got = [(e.body, e.encoding_error is not None, e.oversize) for e in events if isinstance(e, HttpRequest)]
    assert got == [(b"", True, False), (b"", True, False), (b"", False, True), (XML, False, False)]


def test_a_body_in_a_coding_the_gateway_cannot_decode_ends_the_stream() -> None:
    for coding in ("br", "zstd"):
        p = HttpStreamParser("request")
        events = p.feed(req(b"xx", extra=f"Content-Encoding: {coding}\r\n") + req(), 1)
        assert [e.code for e in events] == ["bad-message"] and p.dead
    events = HttpStreamParser("request").feed(req(extra="Content-Encoding: identity\r\n"), 1)
    assert [e.body for e in events if isinstance(e, HttpRequest)] == [XML]


def test_the_path_a_request_is_routed_on_is_the_one_aiohttp_gives_its_router() -> None:
    from gateway.capture.http import request_path

    assert request_path("POST", "/duis/observe?x=1#f") == "/duis/observe"
    assert request_path("POST", "/duis/%6Fbserve") == "/duis/observe"
    assert request_path("POST", "/duis/dno/a%2fb%25") == "/duis/dno/a%2Fb%25"
    assert request_path("POST", "HTTP://gw:80/duis/observe") == "/duis/observe"
    assert request_path("POST", "ftp://gw") == "/"
    assert request_path("CONNECT", "gw:443") == ""
    for refused in ("*", "http:/x", "http:///x", "x/y", ""):
        assert request_path("POST", refused) is None, refused


def test_the_request_path_cache_holds_only_short_targets() -> None:
    from gateway.capture.http import _PATHS, request_path

    _PATHS.clear()
    for i in range(100):
        assert request_path("POST", f"/duis/dno/{i}" + "x" * 60_000) is not None
    assert request_path("POST", "/duis/observe") == "/duis/observe"
    assert sum(len(t) for _, t in _PATHS) < 1000


# -- TCP --------------------------------------------------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.gaps: list[int] = []
        self.conflicts: list[int] = []
        self.ended = False

    def on_data(self, data: bytes, ts: int) -> None:
        self.data += data

    def on_gap(self, length: int, ts: int) -> None:
        self.gaps.append(length)

    def on_conflict(self, offset: int, ts: int) -> None:
        self.conflicts.append(offset)

    def on_end(self, ts: int) -> None:
        self.ended = True


def test_seq_diff_is_signed_across_wrap_around() -> None:
    assert seq_diff(5, 0xFFFFFFFB) == 10
    assert seq_diff(0xFFFFFFFB, 5) == -10


@settings(max_examples=60, deadline=None)
@given(
    isn=st.integers(0, 2**32 - 1),
    payload=st.binary(min_size=1, max_size=2000),
    data=st.data(),
)
def test_any_order_with_duplicates_reassembles_the_original_stream(
    isn: int, payload: bytes, data: st.DataObject
) -> None:
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(payload)), max_size=15))) | {len(payload)})
    segs = []
    last = 0
    for c in cuts:
        segs.append((last, payload[last:c]))
        last = c
    dup = data.draw(st.lists(st.sampled_from(segs), max_size=5))
    order = data.draw(st.permutations(segs + dup))
    sink = Sink()
    s = TcpStream(sink)
    s.syn(isn)
    for off, piece in order:
        s.segment((isn + 1 + off) & 0xFFFFFFFF, piece, False, 1)
    s.segment((isn + 1 + len(payload)) & 0xFFFFFFFF, b"", True, 2)
    assert bytes(sink.data) == payload and sink.ended and sink.gaps == [] and s.conflicts == 0


def test_missing_segment_becomes_a_gap_at_close() -> None:
    sink = Sink()
    s = TcpStream(sink)
    s.syn(100)
    s.segment(101, b"abc", False, 1)
    s.segment(110, b"xyz", False, 2)
    s.close(3)
    assert bytes(sink.data) == b"abcxyz" and sink.gaps == [6] and sink.ended


def test_held_bytes_are_bounded_and_overflow_declares_the_gap() -> None:
    sink = Sink()
    s = TcpStream(sink, max_pending=1000)
    s.syn(0)
    for i in range(5):
        s.segment(1 + 100 + i * 400, b"z" * 400, False, i)
    assert sink.gaps == [100] and s.pending_bytes <= 1000


def test_retransmission_with_other_bytes_is_a_conflict_at_the_first_differing_byte() -> None:
    sink = Sink()
    s = TcpStream(sink)
    s.syn(0)
    s.segment(1, b"hello", False, 1)
    s.segment(1, b"helpo", False, 2)
    s.segment(6, b" world", False, 3)
    assert bytes(sink.data) == b"hello world" and sink.conflicts == [3] and s.conflict_at == 3


def test_other_bytes_the_receiver_had_acknowledged_are_not_a_conflict() -> None:
    sink = Sink()
    s = TcpStream(sink)
    s.syn(0)
    s.segment(1, b"hello", False, 1)
    s.ack(4)  # "hel" acknowledged
    s.segment(1, b"jello", False, 2)  # differs at offset 0 only: acknowledged bytes
    assert sink.conflicts == [] and s.conflicts_acked == 1
    s.segment(1, b"jelpo", False, 3)  # and at offset 3, not acknowledged yet
    assert sink.conflicts == [3]
    s.ack(6)
    s.segment(1, b"HELLO", False, 4)  # all acknowledged: those bytes are no longer even compared
    assert sink.conflicts == [3] and bytes(sink.data) == b"hello"


@settings(max_examples=80, deadline=None)
@given(payload=st.binary(min_size=2, max_size=1500), data=st.data())
def test_a_differing_copy_in_any_order_is_a_conflict_at_exactly_the_byte_that_differs(
    payload: bytes, data: st.DataObject
) -> None:
    # Any segmentation and order, one extra copy of a segment with one byte changed, no
    # acknowledgement: the sink is told of one conflict, at that byte, once every byte before it
    # has been delivered, as it was sent.
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(payload) - 1), max_size=10))) | {len(payload)})
    segs, last = [], 0
    for c in cuts:
        segs.append((last, payload[last:c]))
        last = c
    off, piece = data.draw(st.sampled_from(segs))
    k = data.draw(st.integers(0, len(piece) - 1))
    bad = (off, piece[:k] + bytes([piece[k] ^ 0x5A]) + piece[k + 1 :])
    order = data.draw(st.permutations([*segs, bad]))

    class At(Sink):
        def on_conflict(self, offset: int, ts: int) -> None:
            super().on_conflict(offset, ts)
            self.before = bytes(self.data)

    sink = At()
    s = TcpStream(sink)
    s.syn(0)
    for o, p in order:
        s.segment(1 + o, p, False, 1)
    assert set(sink.conflicts) == {off + k}
    assert len(sink.before) >= off + k and sink.before[: off + k] == payload[: off + k]
    assert len(sink.data) == len(payload)


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(min_size=2, max_size=2000),
    data=st.data(),
)
def test_bytes_cut_by_the_snap_length_are_a_gap_unless_another_copy_brings_them(
    payload: bytes, data: st.DataObject
) -> None:
    # One segment, the whole payload with the FIN, captured only up to ``keep``; maybe a full
    # retransmission follows. The cut bytes hold the stream open: they are either delivered by
    # the other copy or declared a gap when the stream is closed, never skipped silently.
    keep = data.draw(st.integers(0, len(payload) - 1))
    resent = data.draw(st.booleans())
    sink = Sink()
    s = TcpStream(sink)
    s.syn(0)
    s.segment(1, payload[:keep], True, 1, cut=len(payload) - keep)
    assert not sink.ended
    if resent:
        s.segment(1, payload, True, 2)
    s.close(3)
    if resent:
        assert bytes(sink.data) == payload and sink.gaps == []
    else:
        assert bytes(sink.data) == payload[:keep] and sink.gaps == [len(payload) - keep]
    assert sink.ended


def test_bytes_past_the_fin_are_never_delivered_as_if_the_receiver_had_read_them() -> None:
    # Data beyond a FIN's place, or a FIN placed before data already seen: which one the
    # receiver believed depends on the order it got them in. In every order the sink either
    # gets the bytes up to the FIN and a clean end, or a conflict at the FIN's place.
    from itertools import permutations

    segs = [(1, b"hello", False), (6, b"", True), (6, b"POST /smuggled", False), (3, b"llo, wo", False)]
    for order in permutations(segs):
        sink = Sink()
        s = TcpStream(sink)
        s.syn(0)
        for seq, data, fin in order:
            s.segment(seq, data, fin, 1)
        s.close(2)
        assert sink.ended and sink.gaps == [], order
        if sink.conflicts:
            assert set(sink.conflicts) == {5} and bytes(sink.data).startswith(b"hello"), order
        else:
            assert bytes(sink.data) == b"hello", order
