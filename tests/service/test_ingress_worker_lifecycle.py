"""``[server] ingress_processes``: how the pool replaces the workers it loses or kills itself, with real spawned
worker processes, real sockets and real TLS handshakes (the layouts of tests/service/test_ingress_processes.py,
test_ingress_worker_poison.py and test_tls_reload.py, whose helpers these tests reuse).

* a replacement worker serves the ``[server.tls]`` material in force (what the gateway process accepted), not
  whatever the files hold when it starts: after a refused reload (the files left unusable) it still starts;
* a worker still starting when a TLS reload runs is told too."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from servicekit import Ca, Receiver, client_ctx, duis_body, running
from test_ingress_processes import counters
from test_ingress_worker_poison import until
from test_tls_reload import Files, handshake, stale, tls_ingress

from gateway.service.app import Service
from gateway.service.config import TlsServerConfig


@pytest.fixture(scope="module")
def ca() -> Ca:
    return Ca("duisgw ingress lifecycle test CA")


def one_worker(tmp_path: Path, ca: Ca, receiver: Receiver) -> tuple[Files, Any, ssl.SSLContext, Service]:
    """A TLS ingress served by one worker process, with its files, the certificate in force, and a client trusting
    the CA."""
    f = Files(tmp_path)
    old = ca.server()
    old.write(f.cert, f.key)
    trust = client_ctx(ca.write(f.ca))
    svc = tls_ingress(tmp_path, receiver, TlsServerConfig(cert_file=str(f.cert), key_file=str(f.key)),
                      ingress_processes=1)  # fmt: skip
    return f, old, trust, svc


async def test_a_worker_replaced_after_a_refused_tls_reload_starts_and_serves_the_material_in_force(
    tmp_path: Path, ca: Ca, receiver: Receiver
) -> None:
    f, old, trust, svc = one_worker(tmp_path, ca, receiver)
    async with running(svc):
        pool = svc.ingress_pool
        assert pool is not None and pool.live == 1
        assert await handshake(svc.port, trust, duis_body(1)) == (old.cert.serial_number, 204)
        f.key.write_bytes(b"garbage")  # an operator's bad key: refused, the material in force stays
        refused = await svc.reload_transport()
        assert refused["tls"]["server"]["status"] == "refused" and stale(svc)[("tls",)] == 1
        assert await handshake(svc.port, trust, duis_body(2)) == (old.cert.serial_number, 204)

        victim = pool.pids[0]
        pool._workers[0].proc.kill()  # the worker dies (any cause)
        # its replacement starts with the material in force, within a few restart delays
        await until(lambda: pool.live == 1 and victim not in pool.pids, timeout=20.0)
        assert await handshake(svc.port, trust, duis_body(3)) == (old.cert.serial_number, 204)
        assert counters(svc, "duisgw_ingress_worker_events") == {("worker-died",): 1}


async def test_a_worker_starting_during_a_tls_reload_serves_the_reloaded_material(
    tmp_path: Path, ca: Ca, receiver: Receiver
) -> None:
    """A replacement spawned before a reload and not yet serving when it runs is told too (it reads no files)."""
    f, _old, trust, svc = one_worker(tmp_path, ca, receiver)
    new = ca.server()
    async with running(svc):
        pool = svc.ingress_pool
        assert pool is not None
        pool._workers[0].proc.kill()
        await until(lambda: any(w.state == "starting" for w in pool._workers), timeout=20.0)
        new.write(f.cert, f.key)
        report = await svc.reload_transport()
        assert report["tls"]["server"]["status"] == "reloaded", report
        await until(lambda: pool.live == 1, timeout=20.0)
        assert await handshake(svc.port, trust, duis_body(1)) == (new.cert.serial_number, 204)
