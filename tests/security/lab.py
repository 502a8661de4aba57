"""The security lab: a generated world of meters and credentials, and a runner that replays one attack
at a time through the real :class:`gateway.pipeline.Classifier` and a fresh
:class:`gateway.store.durable.DurableEngine` (SQLite in memory) — the same path as ``duisgw replay``.

Each attack (see ``attacks.py``) is a :class:`Case`: timed messages on the two lanes, each marked
``setup`` (genuine traffic that sets the stage), ``attack`` (the forged / replayed / wrapped evidence)
or ``target`` (the AD1 whose decision is judged). Every case runs in its own engine so no attack can
lend or borrow state from another.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from lxml import etree

from gateway.engine.config import EngineConfig
from gateway.engine.events import ActivationResponse
from gateway.gbcs_keys import load_keystore
from gateway.guids import import_guids
from gateway.inventory import import_inventory_csv
from gateway.mpan import with_check_digit
from gateway.pipeline import Classified, Classifier
from gateway.replay import InputMessage, ReplayRun
from gateway.smki import CertificateStore, SigningPolicy
from gateway.store.durable import DurableEngine
from gateway.store.sqlite import SqliteStore
from gateway.testkit.messages import DCC_EUI, SUPPLIER_EUI, MessageFactory, Signer
from gateway.testkit.pki import ROLE_ACB, ROLE_DSP_XML_SIGN, TestPKI
from gateway.testkit.scenario import World
from gbcs.crypto import Verifier

DS = "http://www.w3.org/2000/09/xmldsig#"
SR = "http://www.dccinterface.co.uk/ServiceUserGateway"
DAY = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
#: when the lab's revoked DSP certificate was revoked (the organisation CRL's entry): 40 s before the
#: evidence of the immediate-activation attacks arrives
REVOKED_AT = DAY + dt.timedelta(hours=9)

#: filled by the tests, printed by conftest: one row per attack run
ROWS: list[dict[str, Any]] = []

#: meters 1..N carry the attacks, N+100 are "other" premises, 300+ have no device certificate
MAX_METERS = 80
OTHER = 100
NO_CERT = 300


def t(hhmmss: str, *, days: int = 0) -> dt.datetime:
    parts = [int(p) for p in hhmmss.split(":")]
    while len(parts) < 3:
        parts.append(0)
    return DAY + dt.timedelta(days=days, hours=parts[0], minutes=parts[1], seconds=parts[2])


def signer(cred: Any) -> Signer:
    return Signer(cred.private_key, cred.certificate)


# ------------------------------------------------------------------ XML surgery on signed bytes


def _parse(body: bytes) -> etree._Element:
    # our own freshly built bytes (trusted): a plain parser that keeps everything as it is
    return etree.fromstring(body, etree.XMLParser(remove_blank_text=False, resolve_entities=False))


def _dump(root: etree._Element) -> bytes:
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8", standalone=False)


def edit(body: bytes, fn: Callable[[etree._Element], None]) -> bytes:
    """Apply ``fn`` to a parsed copy of ``body`` and serialise it back (the signature is left alone)."""
    root = _parse(body)
    fn(root)
    out = _dump(root)
    assert out != body, "the edit changed nothing"
    return out


def need(root: etree._Element, path: str) -> etree._Element:
    """``root.find(path)``, which must exist (these are our own well-known documents)."""
    el = root.find(path)
    assert el is not None, path
    return el


def sig_of(root: etree._Element) -> etree._Element:
    return need(root, f"{{{DS}}}Signature")


def flip_b64(el: etree._Element, byte: int = 10) -> None:
    raw = bytearray(base64.b64decode("".join((el.text or "").split())))
    raw[byte] ^= 0x01
    el.text = base64.b64encode(bytes(raw)).decode("ascii")


def flip_signature_value(body: bytes) -> bytes:
    return edit(body, lambda r: flip_b64(need(sig_of(r), f"{{{DS}}}SignatureValue")))


def flip_digest_value(body: bytes) -> bytes:
    return edit(body, lambda r: flip_b64(need(sig_of(r), f".//{{{DS}}}DigestValue"), 3))


def set_key_info(body: bytes, issuer: str | None = None, serial: int | None = None) -> bytes:
    def fn(r: etree._Element) -> None:
        if issuer is not None:
            need(sig_of(r), f".//{{{DS}}}X509IssuerName").text = issuer
        if serial is not None:
            need(sig_of(r), f".//{{{DS}}}X509SerialNumber").text = str(serial)

    return edit(body, fn)


def set_text(body: bytes, local: str, value: str) -> bytes:
    """Change the text of the first ``sr:<local>`` (after signing: the digest no longer matches)."""

    def fn(r: etree._Element) -> None:
        el = r.find(f".//{{{SR}}}{local}")
        assert el is not None, local
        el.text = value

    return edit(body, fn)


def transplant_signature(donor: bytes, target: bytes) -> bytes:
    """``target``'s content (any signature removed) with ``donor``'s genuine Signature appended."""
    droot = _parse(donor)
    troot = _parse(target)
    for old in troot.findall(f"{{{DS}}}Signature"):
        troot.remove(old)
    troot.append(copy.deepcopy(sig_of(droot)))
    return _dump(troot)


def wrap_in_object(genuine: bytes, forged: bytes) -> bytes:
    """XML signature wrapping (XSW): the forged Header/Body take the signed ones' place; the signed
    Header/Body are moved into a ``ds:Object`` inside the genuine Signature, where an id-based
    verifier that dereferences the signed node would still find them."""
    g = _parse(genuine)
    f = _parse(forged)
    sig = sig_of(g)
    obj = etree.SubElement(sig, f"{{{DS}}}Object")
    wrapper = etree.SubElement(obj, f"{{{SR}}}Response", nsmap={"sr": SR})
    wrapper.set("schemaVersion", g.get("schemaVersion") or "5.4")
    for child in list(g)[:2]:
        wrapper.append(child)  # moved (Header, Body)
    g.insert(0, copy.deepcopy(f[0]))
    g.insert(1, copy.deepcopy(f[1]))
    return _dump(g)


def wrap_in_sibling(genuine: bytes, forged: bytes) -> bytes:
    """XSW, sibling variant: the forged Body in place, the signed Body moved under a new element in
    the Header (``sr:Wrapper``), the signed Header kept."""
    g = _parse(genuine)
    f = _parse(forged)
    body = g[1]
    wrapper = etree.SubElement(g[0], f"{{{SR}}}Wrapper")
    wrapper.append(body)
    g.insert(1, copy.deepcopy(f[1]))
    return _dump(g)


def inject_second_body(genuine: bytes, forged: bytes, *, before: bool) -> bytes:
    g = _parse(genuine)
    f = _parse(forged)
    g.insert(1 if before else 2, copy.deepcopy(f[1]))
    return _dump(g)


def signature_not_last(body: bytes) -> bytes:
    """The genuine Signature moved before the Body (still a root child, no longer the last one)."""

    def fn(r: etree._Element) -> None:
        sig = sig_of(r)
        r.remove(sig)
        r.insert(1, sig)

    return edit(body, fn)


def two_signatures(body: bytes, other: bytes) -> bytes:
    """The genuine Signature plus a second, genuine Signature of another message."""

    def fn(r: etree._Element) -> None:
        r.append(copy.deepcopy(sig_of(_parse(other))))

    return edit(body, fn)


def signature_nested(body: bytes) -> bytes:
    """The Signature moved into the Body (a nested signature is not the enveloped root signature)."""

    def fn(r: etree._Element) -> None:
        sig = sig_of(r)
        r.remove(sig)
        r[1][0].append(sig)

    return edit(body, fn)


def strip_signature(body: bytes) -> bytes:
    return edit(body, lambda r: r.remove(sig_of(r)))


def inject_comment(body: bytes, local: str, at: int) -> bytes:
    """Insert ``<!---->`` into the text of ``sr:<local>`` after ``at`` characters. Canonical XML
    without comments — what the signature covers — is unchanged by it."""

    def fn(r: etree._Element) -> None:
        el = need(r, f".//{{{SR}}}{local}")
        text = el.text or ""
        el.text = text[:at]
        comment = etree.Comment("")
        comment.tail = text[at:]
        el.insert(0, comment)

    return edit(body, fn)


# ------------------------------------------------------------------ the world


@dataclass
class Lab:
    """A generated world (test PKI, meters 1..N, other premises, extra credentials) written to disk."""

    world: World
    refs: dict[str, Path]
    forger: Signer  # a DSP-shaped credential from another PKI (unknown to the store)
    dsp_wrong_eui: Signer  # DSP XML-signing role, but the supplier's EUI
    acb: Signer  # role 0x04 (ACB device-facing), DCC EUI
    supplier_ds: Signer  # organisation DS certificate, role 0x02
    expired: Signer  # DSP role and EUI, expired the day before the scenario day
    not_yet: Signer  # DSP role and EUI, valid from the day after
    forger_pki: TestPKI
    revoked: Signer  # DSP role and EUI, valid, but on the organisation CA's CRL (revoked at REVOKED_AT)

    @property
    def f(self) -> MessageFactory:
        return self.world.factory

    def meter(self, n: int) -> tuple[int, int, str]:
        esme = 0x00DB_0000_0000_0000 | n
        return esme, 0x00DC_0000_0000_0000 | n, with_check_digit(f"{190000000000 + n:012d}")

    def device_key(self, n: int) -> Any:
        return self.world.pki.issued[f"{self.meter(n)[0]:016x}-ds"].private_key

    def factory_with_device_key(self, key_of: Callable[[int], Any]) -> MessageFactory:
        return MessageFactory(dsp=self.world.dsp, supplier=self.world.supplier, device_key=key_of)

    @classmethod
    def build(cls, out: Path) -> Lab:
        w = World.generated()
        for n in range(1, MAX_METERS + 1):
            w.meter(n)
            w.meter(OTHER + n)
        for n in range(NO_CERT, NO_CERT + 5):  # in scope and in the inventory, but no DS certificate
            esme = 0x00DB_0000_0000_0000 | n
            w.guids.add(esme)
            w.inventory.append(
                (
                    esme,
                    0x00DC_0000_0000_0000 | n,
                    with_check_digit(f"{190000000000 + n:012d}"),
                    "Landis+Gyr",
                    "E470",
                )
            )
        pki = w.pki
        dsp_wrong_eui = pki.organisation("dsp-role-supplier-eui", SUPPLIER_EUI, ROLE_DSP_XML_SIGN)
        acb = pki.organisation("acb-device-facing", DCC_EUI, ROLE_ACB)
        expired = pki.organisation(
            "dsp-expired", DCC_EUI, ROLE_DSP_XML_SIGN,
            not_before=DAY - dt.timedelta(days=400), not_after=DAY - dt.timedelta(days=1),
        )  # fmt: skip
        not_yet = pki.organisation(
            "dsp-not-yet-valid", DCC_EUI, ROLE_DSP_XML_SIGN, not_before=DAY + dt.timedelta(days=1)
        )
        forger_pki = TestPKI(seed="forger")
        forger = forger_pki.organisation("dsp-xml-sign", DCC_EUI, ROLE_DSP_XML_SIGN)
        revoked = pki.organisation("dsp-revoked", DCC_EUI, ROLE_DSP_XML_SIGN)
        pki.org_ca()  # written with the certificates: it verifies the CRL
        refs = w.write_reference(out)
        crl = pki.crl([(revoked, REVOKED_AT)], this_update=REVOKED_AT)
        (refs["certs"] / "org.crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return cls(
            world=w,
            refs=refs,
            forger=signer(forger),
            dsp_wrong_eui=signer(dsp_wrong_eui),
            acb=signer(acb),
            supplier_ds=signer(pki.issued["supplier-ds"]),
            expired=signer(expired),
            not_yet=signer(not_yet),
            forger_pki=forger_pki,
            revoked=signer(revoked),
        )

    def classifier(self, certificates: CertificateStore | None = None) -> Classifier:
        """The lab's classifier, as ``duisgw serve`` builds it (the GBCS verifier asks the SMKI store, with
        its CRL, about suppliers' DS certificates); ``certificates``: another store."""
        keystore = load_keystore(self.refs["gbcs_keys"])
        store = certificates if certificates is not None else CertificateStore.from_path(self.refs["certs"])
        assert not store.rejected, store.rejected
        return Classifier(
            certificates=store,
            signing_policy=SigningPolicy(),
            gbcs_verifier=Verifier(keystore, acb_eui=getattr(keystore, "acb_eui", None), revocation=store),
        )


# ------------------------------------------------------------------ cases and their outcome


@dataclass
class Case:
    """Timed messages: ``(time, lane, body, role)`` with role ``setup`` | ``attack`` | ``target``."""

    steps: list[tuple[dt.datetime, str, bytes, str]] = field(default_factory=list)

    def setup(self, at: dt.datetime, lane: str, body: bytes) -> Case:
        self.steps.append((at, lane, body, "setup"))
        return self

    def attack(self, at: dt.datetime, lane: str, body: bytes) -> Case:
        self.steps.append((at, lane, body, "attack"))
        return self

    def target(self, at: dt.datetime, body: bytes, *, attack: bool = False) -> Case:
        """The AD1 judged; ``attack=True`` when the AD1 itself is the altered message."""
        self.steps.append((at, "inline", body, "attack-target" if attack else "target"))
        return self


@dataclass
class Outcome:
    targets: list[dict[str, Any]]  # the final decision line of each target AD1
    stopped_by: list[str]  # per attack message: rejection code, first verification problem, or "verified"

    @property
    def suppressed(self) -> int:
        return sum(1 for line in self.targets if line["decision"] == "suppress")


def _stopped_by(c: Classified) -> str:
    if c.rejection is not None:
        return f"rejected:{c.rejection.code}"
    if c.problems:
        return c.problems[0][:70]
    for ev in c.events:
        if isinstance(ev, ActivationResponse) and not (ev.originator_matches and ev.counter_matches):
            return "verified; engine: GBCS originator/counter differ from the RequestID"
    return "verified"


def run_case(lab: Lab, classifier: Classifier, case: Case, tmp: Path) -> Outcome:
    """Replay one case in event time through the classifier and a fresh durable engine."""
    config = EngineConfig()
    guids, _ = import_guids(lab.refs["guids"])
    inventory, _ = import_inventory_csv(lab.refs["inventory"])
    store = SqliteStore(":memory:")
    try:
        runner = ReplayRun(classifier, DurableEngine(store, config, guids, inventory), config.hold_limit)
        owner: dict[str, int] = {}  # message id -> index of the target step still waiting for its line
        final: dict[int, dict[str, Any]] = {}
        stopped: list[str] = []
        steps = sorted(enumerate(case.steps), key=lambda p: (p[1][0], p[0]))

        def take(lines: list[dict[str, Any]]) -> None:
            for line in lines:
                i = owner.pop(line["message_id"], None)
                if i is not None:
                    final[i] = line

        for i, (at, lane, body, role) in steps:
            c = classifier.classify(lane, body, at)  # type: ignore[arg-type]  # pure: the same result feed() gets
            if role in ("attack", "attack-target"):
                stopped.append(_stopped_by(c))
            if role in ("target", "attack-target"):
                owner[c.message_id] = i
            take(runner.feed(InputMessage(at, lane, body, f"step{i}")))  # type: ignore[arg-type]
        take(runner.finish())
        assert not owner, f"targets without a decision: {sorted(owner)}"
        targets = [
            final[i] for i, (_a, _l, _b, role) in enumerate(case.steps) if role in ("target", "attack-target")
        ]
        return Outcome(targets, stopped)
    finally:
        store.close()


def figure_table(rows: list[dict[str, Any]]) -> list[str]:
    """Attempts and suppressions by category (markdown), then one line per attack."""
    cats: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        cats.setdefault(r["category"], []).append(r)
    out = [
        "| category | attempts | suppressions caused | known bugs (xfail) |",
        "| --- | ---: | ---: | ---: |",
    ]
    total = supp = bugs = 0
    for cat, rs in cats.items():
        if cat == "control":
            continue
        n = len(rs)
        s = sum(r["suppressed"] for r in rs if not r["known_bug"])
        b = sum(1 for r in rs if r["known_bug"] and r["suppressed"])
        total, supp, bugs = total + n, supp + s, bugs + b
        out.append(f"| {cat} | {n} | {s} | {b} |")
    out.append(f"| **total** | **{total}** | **{supp}** | **{bugs}** |")
    ctl = [r for r in rows if r["category"] == "control"]
    if ctl:
        out.append(
            f"\ncontrols (genuine evidence): {sum(r['suppressed'] for r in ctl)}/{len(ctl)} suppressed"
        )
    out.append("")
    out.append("| category | attack | stopped by | AD1 decision (reason) |")
    out.append("| --- | --- | --- | --- |")
    for r in rows:
        out.append(f"| {r['category']} | {r['name']} | {r['stopped_by']} | {r['decision']} |")
    return out
