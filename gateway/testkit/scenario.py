"""Readable scenarios of DUIS traffic with their expected decisions.

A :class:`World` holds the actors (DSP and supplier XML-signing credentials, device DS keys, the GUID
list and the inventory) and a :class:`~gateway.testkit.messages.MessageFactory`; a :class:`Scenario`
is a list of timed messages on the two lanes, each inline one with the decision it should get::

    w = World.generated()
    esme, ch, mpan = w.meter(1)
    s = Scenario("immediate", w)
    s.observe("09:00:00", w.factory.activate_request(esme, 1000))
    s.observe("09:00:40", w.factory.activate_response(esme, 1000, s.t("09:00:40")))
    s.inline("09:07:00", w.factory.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07:00"), 1), "suppress")

:meth:`Scenario.write` lays it out as ``duisgw replay`` reads it: ``script.jsonl`` (arrival time,
lane, file), ``messages/*.xml``, ``expected.jsonl``, ``guids.csv``, ``inventory.csv``, ``certs/`` and
``gbcs-keys/`` (unless the world's keys live elsewhere, e.g. ``../shared``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.duis.decode import decode
from gateway.duis.xmldsig import verify
from gateway.errors import DuisgwError
from gateway.mpan import with_check_digit
from gateway.pipeline import unverified_identity
from gateway.smki import CertificateStore, SigningPolicy, SmkiCertificate
from gateway.testkit.messages import DCC_EUI, DNO_EUI, SUPPLIER_EUI, MessageFactory, Signer
from gateway.testkit.pki import ROLE_DSP_XML_SIGN, ROLE_SUPPLIER, ROLE_USER_XML_SIGN, TestPKI
from gbcs.eui import format_eui

__all__ = ["Expect", "Scenario", "Step", "World"]


@dataclass(frozen=True)
class Expect:
    decision: str  # forward | suppress | reject
    reason: str | None = None
    held: bool | None = None


@dataclass(frozen=True)
class Step:
    at: datetime
    lane: str
    body: bytes
    label: str
    expect: Expect | None
    #: the message's DUIS identity (``ResponseID|kind``, ``RequestID|CV``); the gateway decides a message
    #: whose XML signature does not verify under another id: :meth:`Scenario.decided_id`
    message_id: str


@dataclass
class World:
    """Actors and reference data shared by the scenarios of a run."""

    pki: TestPKI
    dsp: Signer
    supplier: Signer
    dno_xml: Signer
    factory: MessageFactory
    guids: set[int] = field(default_factory=set)
    inventory: list[tuple[int, int | None, str | None, str, str]] = field(default_factory=list)
    certs_dir: Path | None = None  # when the certificates live outside the scenario (e.g. ../shared)
    _store: tuple[object, CertificateStore] | None = field(default=None, repr=False, compare=False)

    def certificate_store(self) -> CertificateStore:
        """The DUIS signing certificates ``duisgw replay --certs`` gets for this world (those
        :meth:`write_reference` writes, or ``certs_dir``), built once (again when an organisation is added)."""
        key: object = self.certs_dir if self.certs_dir is not None else len(self.pki.issued)
        if self._store is not None and self._store[0] == key:
            return self._store[1]
        if self.certs_dir is not None:
            store = CertificateStore.from_path(self.certs_dir)
        else:
            store = CertificateStore(
                SmkiCertificate.from_x509(c.certificate, name=c.name)
                for c in self.pki.issued.values()
                if c.certificate.subject != x509.Name([])
            )
        self._store = (key, store)
        return store

    @classmethod
    def generated(cls, seed: str = "duisgw") -> World:
        """A self-contained world: every key and certificate from the deterministic test PKI."""
        pki = TestPKI(seed=seed)
        dsp = pki.organisation("dsp-xml-sign", DCC_EUI, ROLE_DSP_XML_SIGN)
        sup = pki.organisation("supplier-xml-sign", SUPPLIER_EUI, ROLE_USER_XML_SIGN)
        dno = pki.organisation("dno-xml-sign", DNO_EUI, ROLE_USER_XML_SIGN)
        sup_ds = pki.organisation("supplier-ds", SUPPLIER_EUI, ROLE_SUPPLIER)

        def device_key(eui: int) -> ec.EllipticCurvePrivateKey | None:
            if eui == SUPPLIER_EUI:
                return sup_ds.private_key
            cred = pki.issued.get(f"{eui:016x}-ds")
            return cred.private_key if cred is not None else None

        dsp_s = Signer(dsp.private_key, dsp.certificate)
        sup_s = Signer(sup.private_key, sup.certificate)
        factory = MessageFactory(dsp=dsp_s, supplier=sup_s, device_key=device_key)
        return cls(pki, dsp_s, sup_s, Signer(dno.private_key, dno.certificate), factory)

    @classmethod
    def with_shared_dsp(cls, shared: Path, seed: str = "duisgw") -> World:
        """DUIS documents signed with the DCC Boxed test keys in ``shared/smki/dccboxed`` (DSP role 0x89,
        supplier and DNO XML-signing role 0x87); devices from the generated test PKI."""
        world = cls.generated(seed)
        d = shared / "smki" / "dccboxed"

        def load(stem: str) -> Signer:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate((d / f"{stem}.pem").read_bytes())
            key = serialization.load_der_private_key((d / f"{stem}.key").read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return Signer(key, cert)

        world.dsp = load("Z1-accessControlBroker-dSPXmlSign")
        world.supplier = load("xml-sign-90B3D51F30010000-ds")
        world.dno_xml = load("xml-sign-90B3D51F30020000-ds")
        world.factory.dsp = world.dsp
        world.factory.supplier = world.supplier
        world.certs_dir = d
        return world

    def meter(
        self,
        n: int,
        *,
        in_scope: bool = True,
        manufacturer: str = "Landis+Gyr",
        model: str = "E470",
        known: bool = True,
        device_cert: bool = True,
    ) -> tuple[int, int, str]:
        """The n-th test premises: (ESME EUI, Comms Hub EUI, MPAN); issues the ESME's DS certificate
        (unless ``device_cert`` is False: a meter that signs nothing in the scenario needs none)."""
        esme = 0x00DB_0000_0000_0000 | n
        ch = 0x00DC_0000_0000_0000 | n
        mpan = with_check_digit(f"{190000000000 + n:012d}")
        if device_cert:
            self.pki.device(esme)
        if in_scope:
            self.guids.add(esme)
        if known:
            self.inventory.append((esme, ch, mpan, manufacturer, model))
        return esme, ch, mpan

    def write_reference(self, out: Path, *, bundle: bool = False) -> dict[str, Path]:
        """GUID list, inventory, DUIS certificates and GBCS device certificates under ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        guids = out / "guids.csv"
        guids.write_text("ESME GUID\n" + "".join(f"{format_eui(e)}\n" for e in sorted(self.guids)), encoding="utf-8")
        inventory = out / "inventory.csv"
        rows = ["esme,comms_hub,mpxn,manufacturer,model"]
        rows += [
            f"{format_eui(e)},{format_eui(c) if c is not None else ''},{m or ''},{mf},{md}"
            for e, c, m, mf, md in self.inventory
        ]
        inventory.write_text("\n".join(rows) + "\n", encoding="utf-8")
        if self.certs_dir is not None:
            certs = self.certs_dir
        else:
            certs = self.pki.write_smki_dir(out / "certs", with_keys=False)
        keys = self.pki.write_gbcs_keystore(out / "gbcs-keys", bundle=bundle)
        sup_ds = self.pki.issued.get("supplier-ds")
        if sup_ds is not None:  # the supplier's DS certificate, for the GBCS signature of CV5 pre-commands
            (keys / f"{SUPPLIER_EUI:016x}-ds.pem").write_bytes(sup_ds.cert_pem)
        return {"guids": guids, "inventory": inventory, "certs": certs, "gbcs_keys": keys}


class Scenario:
    """Timed messages on the two lanes with the decisions expected for the inline ones."""

    def __init__(self, name: str, world: World, *, day: datetime = datetime(2026, 3, 2, tzinfo=UTC)) -> None:
        self.name = name
        self.world = world
        self.day = day
        self.steps: list[Step] = []
        self.description = ""
        self._verified: dict[tuple[bytes, datetime, int], bool] = {}

    def t(self, hhmmss: str, *, days: int = 0) -> datetime:
        """A time on the scenario's day, ``"HH:MM[:SS]"`` (+ ``days``)."""
        parts = [int(p) for p in hhmmss.split(":")]
        while len(parts) < 3:
            parts.append(0)
        return self.day + timedelta(days=days, hours=parts[0], minutes=parts[1], seconds=parts[2])

    def _add(self, at: datetime | str, lane: str, body: bytes, label: str, expect: Expect | None) -> Step:
        when = self.t(at) if isinstance(at, str) else at
        doc = decode(body)
        step = Step(when, lane, body, label or doc.identity, expect, doc.identity)
        self.steps.append(step)
        return step

    def observe(self, at: datetime | str, body: bytes, label: str = "") -> Step:
        return self._add(at, "observe", body, label, None)

    def inline(
        self,
        at: datetime | str,
        body: bytes,
        decision: str,
        reason: str | None = None,
        *,
        held: bool | None = None,
        label: str = "",
    ) -> Step:
        return self._add(at, "inline", body, label, Expect(decision, reason, held))

    def decided_id(self, step: Step) -> str:
        """The id the gateway decides ``step`` under, and names it by in its decision line: its DUIS identity
        when its XML signature verifies against the world's certificates (the right role's, valid at the
        step's time), else ``<identity>#unverified:<digest of its bytes>``
        (:func:`gateway.pipeline.unverified_identity`): an unsigned or forged copy never takes a genuine
        message's identity."""
        if self._verifies(step):
            return step.message_id
        return unverified_identity(step.message_id, step.body)

    def _verifies(self, step: Step) -> bool:
        store = self.world.certificate_store()
        key = (step.body, step.at, id(store))
        if (known := self._verified.get(key)) is not None:
            return known
        try:
            ok = verify(step.body, store, SigningPolicy(), now=step.at).valid
        except DuisgwError:  # refused outright: the classifier rejects it under its identity's digest too
            ok = False
        self._verified[key] = ok
        return ok

    def expected(self) -> list[dict[str, object]]:
        """The decision each DNO-bound message must get, by the id its decision line carries (one entry per
        id: a re-delivery of the same message is expected to repeat its original's decision)."""
        out: list[dict[str, object]] = []
        seen: set[str] = set()
        for s in self.steps:
            if s.expect is None:
                continue
            mid = self.decided_id(s)
            if mid in seen:
                continue
            seen.add(mid)
            item: dict[str, object] = {"message_id": mid, "decision": s.expect.decision, "label": s.label}
            if s.expect.reason is not None:
                item["reason"] = s.expect.reason
            if s.expect.held is not None:
                item["held"] = s.expect.held
            out.append(item)
        return out

    def write(self, out: Path, *, reference: dict[str, Path] | None = None) -> dict[str, Path]:
        """Write the scenario for ``duisgw replay``; returns the paths (script, expected, reference...)."""
        out.mkdir(parents=True, exist_ok=True)
        msgs = out / "messages"
        msgs.mkdir(exist_ok=True)
        lines = []
        for i, s in enumerate(self.steps, 1):
            name = f"{i:04d}-{s.lane}.xml"
            (msgs / name).write_bytes(s.body)
            stamp = s.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
            lines.append(json.dumps({"time": stamp, "lane": s.lane, "file": f"messages/{name}"}))
        script = out / "script.jsonl"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        expected = out / "expected.jsonl"
        expected.write_text("".join(json.dumps(e) + "\n" for e in self.expected()), encoding="utf-8")
        paths = dict(reference) if reference is not None else self.world.write_reference(out)
        paths.update({"script": script, "expected": expected})
        return paths
