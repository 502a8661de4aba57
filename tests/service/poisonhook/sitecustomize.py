"""TEST ONLY (tests/service/test_ingress_worker_poison.py): a ``sitecustomize`` that the tests put on the
``PYTHONPATH`` of the ingress worker processes they start, so that a worker dies or hangs while it
classifies a chosen message. Nothing in the gateway's own code serves this.

When ``DUISGW_TEST_POISON_MARKER`` is set, :meth:`gateway.pipeline.Classifier.classify` is wrapped in the
process: classifying a body that contains the marker (bytes) sends the process SIGSEGV (default), or with
``DUISGW_TEST_POISON_ACTION`` = ``exit`` ends it (``os._exit``), or = ``hang`` sleeps for ever, holding its
event loop. ``DUISGW_TEST_POISON_ONCE`` = a file path: only while that file does not exist (the first process
to act creates it)."""

from __future__ import annotations

import os

_MARKER = os.environ.get("DUISGW_TEST_POISON_MARKER", "")

if _MARKER:
    import signal
    import time
    from datetime import datetime

    from gateway.pipeline import Classified, Classifier, LaneName

    _needle = _MARKER.encode()
    _action = os.environ.get("DUISGW_TEST_POISON_ACTION", "segv")
    _once = os.environ.get("DUISGW_TEST_POISON_ONCE", "")
    _classify = Classifier.classify

    def _first(path: str) -> bool:
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def _faulty(self: Classifier, lane: LaneName, body: bytes, arrival: datetime) -> Classified:
        if _needle in body and (not _once or _first(_once)):
            if _action == "hang":
                while True:
                    time.sleep(3600)
            if _action == "exit":
                os._exit(70)
            os.kill(os.getpid(), signal.SIGSEGV)
        return _classify(self, lane, body, arrival)

    Classifier.classify = _faulty  # type: ignore[method-assign]
