"""docs/OPERATIONS.md's table of answers and reason codes lists every code the ingress can answer a
refusal with, at its HTTP status, and no code the gateway does not have."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import gateway.duis.errors as duis_errors
import gateway.service.ingress as ingress
import gateway.service.ingress_workers as ingress_workers
import gateway.service.processor as processor
import gateway.service.workers as workers
import gateway.smki as smki
from gateway.duis.xmldsig import SignatureError
from gateway.errors import DuisgwError
from gateway.service.api import StoreUnavailable

DOC = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"

# DUIS errors that never reach the ingress: raised by the validator, the encoder and the schema
# loader (a schema problem of an accepted message is a verification problem, not a refusal), or the
# base class itself
NOT_INGRESS = {"duis_error", "schema_invalid", "validation_failed", "unencodable_model", "schema_unavailable"}


def documented() -> set[tuple[int, str]]:
    text = DOC.read_text(encoding="utf-8")
    assert "\n#### Answers and reason codes\n" in text, "the table's heading moved"
    section = text.split("\n#### Answers and reason codes\n", 1)[1].split("\n#", 1)[0]
    rows = set()
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d{3})\s*\|\s*`([a-z0-9_]+)`\s*\|", line)
        if m:
            rows.add((int(m.group(1)), m.group(2)))
    return rows


def _codes(cls: type[DuisgwError]) -> set[str]:
    out = {str(cls.code)} if isinstance(cls.__dict__.get("code"), str) else set()
    for sub in cls.__subclasses__():
        out |= _codes(sub)
    return out


def _ingress_literals() -> set[tuple[int, str]]:
    """The (status, code) pairs the ingress handler answers with literally (``_text(STATUS, "code"``)."""
    tree = ast.parse(Path(ingress.__file__).read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_text":
            status, code = node.args[0], node.args[1]
            if (
                isinstance(status, ast.Constant)
                and isinstance(code, ast.Constant)
                and isinstance(code.value, str)
            ):
                out.add((int(status.value), code.value))
    return out


def expected() -> set[tuple[int, str]]:
    assert processor.BadArrivalHeader.code == "bad_arrival_header"
    refused = _codes(duis_errors.DuisError) - NOT_INGRESS
    assert processor.ImplausibleMessageTime.code == "implausible_message_time"
    refused |= {SignatureError.code, smki.TimeOutOfRange.code, processor.BadArrivalHeader.code,
                processor.ImplausibleMessageTime.code,
                ingress_workers.PoisonMessage.code}  # fmt: skip  (an ingress worker refuses a poison message)
    unavailable = _codes(StoreUnavailable)  # (RemoteUnavailable relays one of these from the gateway process)
    assert (
        workers.ClassifyWorkerDied.code in unavailable
        and ingress_workers.IngressUnavailable.code in unavailable
    )
    return {(400, c) for c in refused} | {(503, c) for c in unavailable} | _ingress_literals()


def test_the_reason_code_table_lists_every_refusal_the_ingress_can_answer_and_nothing_else() -> None:
    doc = documented()
    assert len(doc) >= 15  # the table was found and read
    assert doc == expected()
