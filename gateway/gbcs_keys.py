"""Load a GBCS key store from a directory (the RTDS/gbcs-parser layout, GBCS.md §7).

Files: ``<eui16hex>-ds.pem`` / ``<eui16hex>-ka.pem`` (X.509 certificates: one, or several PEM blocks - a
device's old and new certificate - each taken as if it were a file of its own), ``<eui16hex>-ds.key`` /
``<eui16hex>-ka.key`` (PKCS#8 private keys). ``-pp-ka`` (prepayment UTRN) files are not used for
GBCS verification and are skipped. Certificates are indexed by the EUI *in the certificate* (device
SAN hwSerialNum, organisation x500UniqueIdentifier) and by the file name only when the certificate
names none (or two: :func:`gbcs.keystore.certificate_eui`); the verifier never checks a signature with
such a certificate (it vouches only for the EUI it names itself), and it never shadows one that names the
EUI. A file whose certificate names a different EUI than its file name (the RTDS WAN provider's
``ka.pem`` is a copy of supplier 2's) is indexed by the certificate's EUI and listed in ``mismatched``.
Private keys are indexed by file name. Unreadable files are listed in ``skipped`` with the reason.

The folder is walked recursively, entering real sub-folders only: a symbolic link to a folder is not
followed (one pointing back up the tree would loop forever), and a symbolic link to a file is followed
unless it loops or leads nowhere. Such entries are listed in ``skipped`` and logged as warnings, and
everything else loads; both loads (with and without the index) walk the folder the same way.

Trust is by presence, as in the SMKI certificate store (:mod:`gateway.smki`): a certificate in the folder
is relied on as itself; no path to a device or organisation CA is built or verified.

**Several certificates of one EUI and usage** (a device whose certificate was replaced - GBCS CS02 "Update
Device Certificate" - and an SMKI repository download holding its old and its new one) are all held, as
long as they are of the best rank given for that EUI (:func:`_add_certificate`): the rank says how far a
file's word is taken (a certificate that names the EUI itself from the file named after it, then one that
names it from another file or a bundle, then one that names no EUI and is filed there by its file name
only). Every certificate of the best rank is kept, each different certificate once (an exact copy, the same
DER, is listed in ``skipped`` as held once); those of a lower rank are listed in ``skipped``. So a
certificate that names no EUI never shadows one that does, and a stray copy elsewhere never shadows or
joins the device's own file: to add a device's new certificate beside the one in ``<eui>-ds.pem``, put it
in that same file (a ``-ds.pem`` / ``-ka.pem`` file may hold several PEM certificates) or replace the
file, or drop the file and ship both in a bundle. The certificates of one EUI are ordered newest first
(notBefore, then DER): the first is what the single lookups answer (``ds_certificate``; ``ka_certificate``
answers the one that pairs with the EUI's private key when the store holds it); the verifier
(:class:`gbcs.crypto.Verifier`, through ``ds_certificates`` / ``ka_certificates``) tries each one that
passes its checks (validity at the checking time, keyUsage, the EUI it names, role, revocation) and a
signature is valid when one of them verifies it - its result names which (serial, notBefore). An expired
or revoked certificate is held like any other (the key store does not judge time or revocation): the
verifier refuses it at every check, and the other one still vouches. ``len()`` of an index store, the
``certificates`` of a reload's answer and the "GBCS key store ready" log count certificates (an EUI with two
counts twice).

A *bundle* ``*.certs.pem`` may hold any number of certificates; each is indexed by the EUI it names
and used as DS or KA according to its key usage (digitalSignature / keyAgreement). Test traffic with
thousands of devices ships its device certificates that way.

**Persisted index** (``load_keystore(path, index=FILE)``, what ``duisgw serve`` uses with
``state_dir/gbcs-keys.idx``). Parsing every certificate costs ~140 µs and a few KiB of memory each:
for the ~1.4 M meters of MP102B that is minutes at every start and gigabytes per process (and again in
every classify worker process). The first load parses the directory as above and writes an index
file (format 2, magic ``DUISGWK2``): every certificate's DER, sorted by (usage, EUI), the certificates of
one EUI next to each other in the store's order, with the EUIs (one entry per certificate: an EUI with
two certificates appears twice), offsets and lengths as packed arrays, the ACB's EUI, and the SHA-256 of
the directory listing (relative path, size, mtime of every file). A later load whose listing digest
matches maps the file (``mmap``; worker processes share the page cache) and parses an EUI's certificates
only when they are first asked for (binary search for the first and last entry of the EUI, then a bounded
LRU of parsed certificates per EUI). Any change in the directory, or an unreadable / foreign index file -
among them an index of format 1 (``DUISGWK1``, one certificate per EUI), which is never read as format 2 -
makes the load rebuild the index (written to a temporary file and renamed: never half-written). Private keys
(``*.key``, test fixtures; a gateway has none of its devices') are always read from the directory.

A certificate entry that does not parse, or names another EUI than the one it is filed under, means
the index is corrupt although the directory is unchanged: from then on every lookup answers "not
held" (device signatures unverifiable, never checked against another device's key), the file is
removed (only when the path still names the very file this store mapped) so that the next load or
reload rebuilds it, and the event is logged once at ERROR and reported to the
:meth:`IndexedKeyStore.watch_corrupt` callback. ``duisgw serve`` counts it in
``duisgw_gbcs_key_index_corrupt_total`` (a classify or ingress worker process relays its own finding to
the gateway process) and heals by itself: the gateway process then runs the key store part of a reload
(:func:`reload_keystore`, which rebuilds a corrupt store in force, or one whose index file a worker
removed, although the listing is unchanged) off its event loop, at most one at a time and at most one
start per 30 s (``gateway.service.serve.KEY_HEAL_INTERVAL``: a folder that keeps producing a corrupt index
cannot loop), and every process maps the rebuilt index (WARNING ``GBCS key index rebuilt after it was
found corrupt``, ``duisgw_gbcs_key_index_rebuilds_total{trigger="corrupt"}``). No SIGHUP or reload is
needed; between the finding and the swap that process's device signatures are unverifiable (fail-closed:
no AD1 is suppressed on them).

**Reload** (:func:`reload_keystore`, what ``duisgw serve`` runs on SIGHUP or ``POST /admin/reload``). The
gateway process lists the folder again; the same listing keeps the store in force (unless it was found
corrupt, or its index file was removed since). A changed folder is parsed in memory and judged
(:func:`replacement_problem`: a folder that cannot be read, or unreadable files that would take away
certificates in force, are refused) *before* the index file is touched, so a refused folder leaves the
index of the store in force for any process started later. An accepted one is written as the index (a
temporary file per process and thread, renamed over the old one: a process that maps the old file keeps
reading it, unchanged, until it swaps) and mapped. The other processes (classify and ingress workers)
then open that same file through a :class:`KeyStoreRef` (folder, index, listing digest, private key
bytes; picklable), without walking or parsing the folder: every process holds the same generation.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import logging
import mmap
import os
import re
import struct
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, overload

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gbcs.eui import format_eui
from gbcs.keystore import MemoryKeyStore, certificate_eui, pairing_certificate

log = logging.getLogger("duisgw.gbcs_keys")

__all__ = [
    "DirectoryKeyStore",
    "IndexedKeyStore",
    "KeyStoreRef",
    "KeyStoreReload",
    "listing_digest",
    "load_keystore",
    "reload_keystore",
    "replacement_problem",
    "write_index",
]

_NAME = re.compile(r"^(?P<eui>[0-9a-fA-F]{16})-(?P<pp>pp-)?(?P<usage>ds|ka)\.(?P<ext>pem|key)$")


@dataclass
class DirectoryKeyStore(MemoryKeyStore):
    """A :class:`gbcs.keystore.MemoryKeyStore` filled from a directory, with a loading report."""

    path: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    mismatched: list[tuple[str, int]] = field(default_factory=list)


@overload
def load_keystore(path: str | Path, *, index: None = None) -> DirectoryKeyStore: ...
@overload
def load_keystore(path: str | Path, *, index: str | Path) -> IndexedKeyStore: ...
def load_keystore(
    path: str | Path, *, index: str | Path | None = None
) -> DirectoryKeyStore | IndexedKeyStore:
    """Read every ``*.pem``/``*.key`` file of ``path`` (recursively, symbolic links as the module docstring
    says); with ``index``, through the persisted index. Raises ``FileNotFoundError`` when ``path`` is not a
    directory."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"key store directory not found: {root}")
    listing, unusable = _walk(root)
    if index is None:
        return _load_directory(root, listing, unusable)
    digest = listing_digest(root, listing)
    found = IndexedKeyStore.open(index, root, digest)
    if found is None:
        found = _publish(_load_directory(root, listing, unusable), index, digest, root)
    else:
        found.skipped[:] = unusable  # what the listing could not use (the rest was reported when built)
    _load_private_keys(found, root, listing)
    return found


def _publish(built: DirectoryKeyStore, index: str | Path, digest: bytes, root: Path) -> IndexedKeyStore:
    """Write ``built`` as the index file (atomically) and map it."""
    write_index(built, index, digest)
    found = IndexedKeyStore.open(index, root, digest)
    if found is None:  # pragma: no cover - the file just written does not read back
        raise OSError(f"GBCS key index {index} could not be read back after writing it")
    found.skipped[:] = [x for x in built.skipped if not x[0].endswith(".key")]
    found.mismatched[:] = built.mismatched
    return found


# ------------------------------------------------------------------------------------------ reload

#: How the ``skipped`` reasons of a file that could not be *read* begin (a refusal, on reload: see
#: :func:`replacement_problem`), as opposed to files the store does not use by design (other names,
#: prepayment keys, bare public keys, a certificate of a lower rank than another of its EUI, an exact copy
#: of one held, a link to a folder).
_READ_FAILURES = (
    "cannot be read",
    "folder cannot be read",
    "unreadable ",
    "dangling symbolic link",
    "symbolic link loop",
)


def _held(store: object) -> set[tuple[str, int, bytes]]:
    """Every certificate ``store`` holds (an index or a store in memory) as (usage, EUI, SHA-256 of its DER):
    an EUI with two certificates counts twice, and losing one of them is losing a certificate."""
    from cryptography.hazmat.primitives.serialization import Encoding

    if isinstance(store, IndexedKeyStore):
        return {(usage, eui, hashlib.sha256(der).digest()) for usage, eui, der in store.entries()}
    if isinstance(store, MemoryKeyStore):
        return {
            (usage, eui, hashlib.sha256(cert.public_bytes(Encoding.DER)).digest())
            for usage, certs, lookup in (
                ("ds", store.ds, store.ds_certificates),
                ("ka", store.ka, store.ka_certificates),
            )
            for eui in certs
            for cert in lookup(eui)
        }
    return set()


def _count(store: object) -> int:
    """How many certificates ``store`` holds (every one of an EUI with several)."""
    if isinstance(store, IndexedKeyStore):
        return len(store)
    if isinstance(store, MemoryKeyStore):
        return store.certificate_count()
    return 0


def replacement_problem(current: object, candidate: DirectoryKeyStore) -> str | None:
    """Why ``candidate`` (the key folder read again on a reload) must not replace the store in force,
    ``current``; None when it may. Refused, as for the SMKI store (:func:`gateway.smki.replacement_problem`):
    a candidate without a single certificate while the store in force has some, and a candidate with files
    that could not be read (:data:`_READ_FAILURES`) that would drop a certificate in force - a file that
    cannot be read must never take a device's certificate away (nor one of a device's two: certificates are
    compared one by one, by their DER). Files removed from the folder without any
    read failure are the operator's decision (their certificates go)."""
    if _count(current) and not (candidate.ds or candidate.ka):
        return "no usable GBCS certificate in the new key store"
    unread = [(name, why) for name, why in candidate.skipped if why.startswith(_READ_FAILURES)]
    if not unread:
        return None
    lost = _held(current) - _held(candidate)  # (sets of every EUI: only when a file could not be read)
    if not lost:
        return None
    first = ", ".join(f"{name} ({why})" for name, why in unread[:5])
    return (
        f"{len(unread)} file(s) of the GBCS key folder could not be read ({first}) and the new key store "
        f"would drop {len(lost)} certificate(s) in force"
    )


@dataclass(frozen=True)
class KeyStoreReload:
    """What a reload read of the GBCS key folder: a new store, the same listing (``store`` None, nothing
    refused: the store in force stays), or why the new one is refused."""

    store: IndexedKeyStore | None = None
    refused: str | None = None


def reload_keystore(path: str | Path, *, index: str | Path, current: object) -> KeyStoreReload:
    """Read the key folder again for a reload (the gateway process, in a worker thread).

    The same listing digest as ``current``'s keeps it (nothing is parsed or written), unless ``current`` was
    found corrupt or ``index`` is no longer the file it maps (a worker process that found its copy corrupt
    removed it): then it is rebuilt all the same. Otherwise the folder is parsed *in memory* and judged (:func:`replacement_problem`)
    before the index file is touched: a refused folder leaves ``index`` as it was (the store in force, which
    processes started later map). An accepted one is written as the index (a temporary file renamed over
    it: a process that maps the old one keeps reading the old file, never a half-written one) and mapped.
    A folder that is missing or cannot be read is refused. Raises ``OSError`` when the index cannot be
    written (then nothing changed)."""
    root = Path(path)
    try:
        if not root.is_dir():
            return KeyStoreReload(refused=f"key store directory not found: {root}")
        with os.scandir(root):
            pass
    except OSError as exc:
        return KeyStoreReload(refused=f"key store directory {root} cannot be read: {exc.strerror or exc}")
    listing, unusable = _walk(root)
    digest = listing_digest(root, listing)
    if (
        isinstance(current, IndexedKeyStore)
        and current.digest == digest
        and current.corrupt is None
        and Path(current.path or "") == root
        and current.maps(index)
    ):
        return KeyStoreReload()
    built = _load_directory(root, listing, unusable)
    problem = replacement_problem(current, built)
    if problem is not None:
        return KeyStoreReload(refused=problem)
    found = _publish(built, index, digest, root)
    _load_private_keys(found, root, listing)
    return KeyStoreReload(found)


@dataclass(frozen=True)
class KeyStoreRef:
    """What another process needs to hold the same GBCS key store as the gateway process (picklable: the
    classify and ingress workers get it in their spec at start and in the reload message): the key folder,
    the index file the gateway process wrote, the listing digest it was built from (its generation) and the
    private key files' bytes as the gateway process read them (a gateway holds none of its devices'; test
    fixtures do)."""

    root: str
    index: str
    digest: bytes
    key_files: tuple[tuple[str, bytes], ...] = ()
    #: the index file's (device, inode) when it was written: a rebuild of the same listing is another file
    identity: tuple[int, int] = (0, 0)

    @property
    def generation(self) -> str:
        """Names this key store: the listing digest and the index file (a rebuilt index is a new one)."""
        return f"{self.digest.hex()}-{self.identity[0]}-{self.identity[1]}"

    def open(self) -> IndexedKeyStore:
        """Map the index of this generation (no walk of the folder, nothing parsed until used). When the
        index file is no longer that one (removed as corrupt, or rebuilt since), the folder is loaded as at
        start (:func:`load_keystore`), with a warning."""
        root = Path(self.root)
        store = IndexedKeyStore.open(self.index, root, self.digest)
        if store is None:
            log.warning(
                "GBCS key index is not the one the gateway process built: loading the key folder",
                extra={"index": self.index, "digest": self.digest.hex()[:16]},
            )
            return load_keystore(root, index=self.index)
        for name, data in self.key_files:
            _add_private_key_file(store, name, data)
        store.key_files = self.key_files
        return store


_Listing = list[tuple[str, int, int]]


def _walk(root: Path) -> tuple[_Listing, list[tuple[str, str]]]:
    """Every file under ``root`` as ``(relative path, size, mtime in ns)``, sorted (one ``scandir`` pass:
    ~5 µs a file, so a folder of 1.4 M certificates is listed in seconds), and the entries that cannot be
    used, each with the reason (also logged as a warning).

    Folders are entered only when they are real folders: a symbolic link to a folder is not followed (a
    link back up the tree would loop), and is reported. A symbolic link to a file is followed; one that
    loops or leads nowhere is reported, as is a folder or file that cannot be read. Both loads (with and
    without the index) take their files from here, so they always see the same certificates."""
    out: _Listing = []
    unusable: list[tuple[str, str]] = []
    cut = len(str(root)) + 1

    def skip(path: str, why: str) -> None:
        rel = path[cut:].replace(os.sep, "/")
        unusable.append((rel, why))
        log.warning("GBCS key folder entry skipped", extra={"entry": rel, "reason": why})

    def entries(folder: str) -> Iterator[os.DirEntry[str]]:  # streamed: a folder may hold millions
        try:
            with os.scandir(folder) as it:
                yield from it
        except OSError as exc:
            skip(folder, f"folder cannot be read: {exc.strerror}")

    stack = [str(root)]
    while stack:
        for e in entries(stack.pop()):
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                    continue
                if e.is_symlink() and e.is_dir():
                    skip(e.path, "symbolic link to a folder: not followed")
                    continue
                if not e.is_file():
                    if e.is_symlink():
                        skip(e.path, "dangling symbolic link (its target does not exist)")
                    continue  # a FIFO, socket or device: never a certificate
                st = e.stat()
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    skip(e.path, "symbolic link loop (following it never reaches a file)")
                else:
                    skip(e.path, f"cannot be read: {exc.strerror}")
                continue
            out.append((e.path[cut:].replace(os.sep, "/"), st.st_size, st.st_mtime_ns))
    out.sort()
    return out, unusable


def _listing(root: Path) -> _Listing:
    """``(relative path, size, mtime in ns)`` of every usable file under ``root``, sorted (see :func:`_walk`)."""
    return _walk(root)[0]


def listing_digest(root: Path, listing: _Listing | None = None) -> bytes:
    """SHA-256 of the directory listing: relative path, size and mtime (ns) of every file, sorted."""
    h = hashlib.sha256()
    for rel, size, mtime in listing if listing is not None else _listing(root):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.digest()


@dataclass(slots=True)
class _Held:
    """The certificates given so far for one (usage, EUI): their rank and (source name, certificate). (No DER
    kept: a folder of 1.4 M certificates would hold them all twice while it is read; certificates compare by
    their DER.)"""

    rank: int
    entries: list[tuple[str, x509.Certificate]]


# (usage, EUI) -> the certificates of the best rank given for it so far (_add_certificate)
_Sources = dict[tuple[str, int], _Held]
_NAMES_IT, _FILED_THERE = 1, 0


def _add_certificate(
    store: DirectoryKeyStore,
    sources: _Sources,
    name: str,
    cert: x509.Certificate,
    usage: str,
    eui: int,
    *,
    names_it: bool = True,
) -> None:
    """Take ``cert`` for ``eui`` (held in ``sources``; :func:`_finish` puts them in the store). A certificate
    that names the EUI itself (SAN hwModuleName or organisation identifier) is kept, from whichever file
    it comes (the device's own ``<eui>-ds.pem``, another file, a ``*.certs.pem`` bundle: a device's old and
    new certificate after a replacement are often in different downloads), and so is every other one
    that names it. One that names no EUI and is filed there by its file name only (``names_it`` False)
    vouches for no one (the verifier never uses it): it is kept only while no certificate names the EUI,
    so that the verifier can say why it is not usable, and is listed in ``skipped`` otherwise. An exact
    copy (the same DER) of one kept is listed in ``skipped`` too. Whatever the listing order."""
    rank = _NAMES_IT if names_it else _FILED_THERE
    held = sources.get((usage, eui))
    if held is None:
        sources[(usage, eui)] = _Held(rank, [(name, cert)])
        return
    what = f"another {usage.upper()} certificate for {format_eui(eui)}"
    if rank > held.rank:
        for loser, _cert in held.entries:
            store.skipped.append((loser, f"{what} is used: {name} (which names that EUI itself)"))
        sources[(usage, eui)] = _Held(rank, [(name, cert)])
    elif rank < held.rank:
        store.skipped.append((name, f"{what} is used: {held.entries[0][0]}"))
    elif (same := next((n for n, c in held.entries if c == cert), None)) is not None:  # the same DER
        store.skipped.append(
            (name, f"the same {usage.upper()} certificate for {format_eui(eui)} as {same}: held once")
        )
    else:
        held.entries.append((name, cert))


def _newest_first(entry: tuple[str, x509.Certificate]) -> tuple[float, bytes]:
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = entry[1]
    return -cert.not_valid_before_utc.timestamp(), cert.public_bytes(Encoding.DER)


def _finish(store: DirectoryKeyStore, sources: _Sources) -> None:
    """Put the certificates kept in ``sources`` into ``store``: those of one EUI newest first (notBefore,
    then DER: the order does not depend on the listing), the first as the one the single lookups answer."""
    for (usage, eui), held in sources.items():
        entries = held.entries if len(held.entries) == 1 else sorted(held.entries, key=_newest_first)
        for i, (_name, cert) in enumerate(entries):
            store.add_certificate(cert, usage, eui, beside=i > 0)


def _pem_certificates(data: bytes) -> tuple[list[x509.Certificate], str | None]:
    """Every certificate of a PEM file (a ``<eui>-ds.pem`` may hold a device's old and new one); a file whose
    later blocks do not parse gives its first certificate, as a one-certificate file always did, and why the
    rest could not be read (a read failure: a reload must not drop a certificate in force on it)."""
    try:
        return x509.load_pem_x509_certificates(data), None
    except ValueError as e:
        return [x509.load_pem_x509_certificate(data)], f"unreadable certificate after its first: {e}"


def _load_directory(
    root: Path, listing: _Listing | None = None, unusable: list[tuple[str, str]] | None = None
) -> DirectoryKeyStore:
    """Parse every file of ``listing`` (:func:`_walk` of ``root`` when not given); ``unusable`` (the
    entries the walk could not use) are reported in ``skipped`` first."""
    if listing is None:
        listing, unusable = _walk(root)
    store = DirectoryKeyStore(path=root, skipped=list(unusable or ()))
    sources: _Sources = {}
    files = [root / rel for rel, _size, _mtime in listing]
    # certificates first (so ACB detection and EUI indexing do not depend on listing order)
    for p in sorted(files, key=lambda q: (q.suffix != ".pem", q.name)):
        if p.name.endswith(".certs.pem"):
            _load_bundle(store, sources, p)
            continue
        m = _NAME.match(p.name)
        if m is None:
            store.skipped.append((p.name, "name is not <eui16hex>-(ds|ka).(pem|key)"))
            continue
        if m["pp"]:
            store.skipped.append((p.name, "prepayment (UTRN) key, not used for GBCS verification"))
            continue
        name_eui = int(m["eui"], 16)
        data = _read(store, p)
        if data is None:
            continue
        if m["ext"] == "pem":
            if b"BEGIN CERTIFICATE" not in data:
                store.skipped.append((p.name, "not an X.509 certificate (e.g. a bare public key)"))
                continue
            try:
                certs, unread = _pem_certificates(data)
            except (ValueError, UnsupportedAlgorithm) as e:
                store.skipped.append((p.name, f"unreadable certificate: {e}"))
                continue
            if unread is not None:
                store.skipped.append((p.name, unread))
            for i, cert in enumerate(certs):
                label = p.name if len(certs) == 1 else f"{p.name}#{i}"
                try:
                    cert_eui = certificate_eui(cert)
                except (ValueError, UnsupportedAlgorithm) as e:
                    store.skipped.append((label, f"unreadable certificate: {e}"))
                    continue
                if cert_eui is not None and cert_eui != name_eui:
                    store.mismatched.append((label, cert_eui))
                key = name_eui if cert_eui is None else cert_eui
                _add_certificate(
                    store, sources, label, cert, m["usage"], key,
                    names_it=cert_eui is not None,
                )  # fmt: skip
        else:
            _add_private_key(store, p.name, m["usage"], name_eui, data)
    _finish(store, sources)
    return store


class _PrivateKeys(Protocol):
    ka_private: dict[int, ec.EllipticCurvePrivateKey]
    ds_private: dict[int, ec.EllipticCurvePrivateKey]
    skipped: list[tuple[str, str]]


def _add_private_key(store: _PrivateKeys, name: str, usage: str, eui: int, data: bytes) -> None:
    """Index a PKCS#8 EC private key file under the EUI of its name (or report why not)."""
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        store.skipped.append((name, f"unreadable private key: {e}"))
        return
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        store.skipped.append((name, "not an EC private key"))
        return
    (store.ka_private if usage == "ka" else store.ds_private).setdefault(eui, key)


def _read(store: _PrivateKeys, p: Path) -> bytes | None:
    """The bytes of ``p``, or None with the reason in ``skipped`` (removed or unreadable since the listing)."""
    try:
        return p.read_bytes()
    except OSError as exc:
        store.skipped.append((p.name, f"cannot be read: {exc.strerror}"))
        return None


def _load_private_keys(store: IndexedKeyStore, root: Path, listing: _Listing) -> None:
    """Read the private key files of ``listing`` into ``store`` (and keep their bytes in ``key_files``)."""
    read: list[tuple[str, bytes]] = []
    for rel, _size, _mtime in listing:
        p = root / rel
        m = _NAME.match(p.name)
        if m is not None and not m["pp"] and m["ext"] == "key" and (data := _read(store, p)) is not None:
            read.append((p.name, data))
            _add_private_key(store, p.name, m["usage"], int(m["eui"], 16), data)
    store.key_files = tuple(read)


def _add_private_key_file(store: _PrivateKeys, name: str, data: bytes) -> None:
    m = _NAME.match(name)
    if m is not None and not m["pp"] and m["ext"] == "key":
        _add_private_key(store, name, m["usage"], int(m["eui"], 16), data)


def _load_bundle(store: DirectoryKeyStore, sources: _Sources, path: Path) -> None:
    data = _read(store, path)
    if data is None:
        return
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        store.skipped.append((path.name, f"unreadable certificate bundle: {e}"))
        return
    for i, cert in enumerate(certs):
        try:
            eui = certificate_eui(cert)
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value if eui is not None else None
        except x509.ExtensionNotFound:
            store.skipped.append((f"{path.name}#{i}", "certificate has no key usage (DS or KA?)"))
            continue
        except (ValueError, UnsupportedAlgorithm) as e:
            store.skipped.append((f"{path.name}#{i}", f"unreadable certificate: {e}"))
            continue
        if eui is None or ku is None:
            store.skipped.append((f"{path.name}#{i}", "certificate names no EUI-64 (or more than one)"))
            continue
        usage = "ka" if ku.key_agreement else "ds"
        _add_certificate(store, sources, f"{path.name}#{i}", cert, usage, eui)


# ------------------------------------------------------------------------------------------ persisted index

#: format 2: an EUI may have several entries (format 1, ``DUISGWK1``, had one per EUI: such a file is not
#: this format's and is rebuilt, never read as one)
_MAGIC = b"DUISGWK2"
_HEADER = struct.Struct("<8s32sQQQ")  # magic, listing digest, ACB EUI (2**64-1: none), #DS, #KA entries
_NO_EUI = 0xFFFF_FFFF_FFFF_FFFF


def write_index(store: MemoryKeyStore, index: str | Path, digest: bytes) -> None:
    """Write ``store``'s certificates as an index file (atomically: a temporary file, then a rename): one
    entry per certificate, sorted by EUI, the certificates of one EUI in the store's order."""
    from cryptography.hazmat.primitives.serialization import Encoding

    path = Path(index)
    sections: list[tuple[array[int], array[int], array[int]]] = []
    blob = bytearray()
    for certs, lookup in ((store.ds, store.ds_certificates), (store.ka, store.ka_certificates)):
        euis, offsets, lengths = array("Q"), array("Q"), array("I")
        for eui in sorted(certs):
            for cert in lookup(eui):
                der = cert.public_bytes(Encoding.DER)
                euis.append(eui)
                offsets.append(len(blob))
                lengths.append(len(der))
                blob += der
        sections.append((euis, offsets, lengths))
    acb = _NO_EUI if store.acb_eui is None else store.acb_eui
    # per process and thread: two writers never share it
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(_HEADER.pack(_MAGIC, digest, acb, len(sections[0][0]), len(sections[1][0])))
        for euis, offsets, lengths in sections:
            f.write(euis.tobytes())
            f.write(offsets.tobytes())
            f.write(lengths.tobytes())
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Section:
    """The sorted EUIs of one usage (one entry per certificate) with where each certificate's DER is."""

    __slots__ = ("euis", "lengths", "offsets")

    def __init__(self, buf: mmap.mmap, at: int, n: int) -> None:
        self.euis = array("Q", buf[at : at + 8 * n])
        at += 8 * n
        self.offsets = array("Q", buf[at : at + 8 * n])
        at += 8 * n
        self.lengths = array("I", buf[at : at + 4 * n])

    def end(self, at: int) -> int:
        return at + 20 * len(self.euis)

    def find(self, eui: int) -> list[tuple[int, int]]:
        """(offset, length) of every certificate of ``eui``, in the stored order (two binary searches)."""
        i = bisect.bisect_left(self.euis, eui)
        j = bisect.bisect_right(self.euis, eui, i)
        return [(self.offsets[k], self.lengths[k]) for k in range(i, j)]


class IndexedKeyStore:
    """A :class:`gbcs.keystore.KeyStore` and :class:`gbcs.keystore.CertificateLists` over a persisted index:
    certificates parsed on first use."""

    def __init__(self, buf: mmap.mmap, root: Path, *, cache_size: int = 65536) -> None:
        _magic, digest, acb, n_ds, n_ka = _HEADER.unpack_from(buf, 0)
        at = _HEADER.size
        self._ds = _Section(buf, at, n_ds)
        at = self._ds.end(at)
        self._ka = _Section(buf, at, n_ka)
        self._blob = self._ka.end(at)
        self._buf = buf
        # (usage, EUI) -> every certificate of it, parsed (bounded LRU: ``cache_size`` EUIs)
        self._cache: OrderedDict[tuple[str, int], tuple[x509.Certificate, ...]] = OrderedDict()
        self._cache_size = cache_size
        self.path: Path | None = root
        self.acb_eui: int | None = None if acb == _NO_EUI else acb
        self.ka_private: dict[int, ec.EllipticCurvePrivateKey] = {}
        self.ds_private: dict[int, ec.EllipticCurvePrivateKey] = {}
        # files found unusable when the index is built; links and unreadable entries at every load
        self.skipped: list[tuple[str, str]] = []
        self.mismatched: list[tuple[str, int]] = []
        self.index: Path | None = None
        #: the listing digest the index was built from (names the store's generation)
        self.digest: bytes = bytes(digest)
        #: the private key files read with it, as (name, bytes) (:class:`KeyStoreRef` carries them)
        self.key_files: tuple[tuple[str, bytes], ...] = ()
        # the file mapped (device, inode): only that file is ever removed as corrupt
        self._identity: tuple[int, int] | None = None
        # Why the index was found corrupt at a lookup (then every lookup answers "not held"), else None.
        self.corrupt: str | None = None
        self._on_corrupt: Callable[[str], None] | None = None

    @classmethod
    def open(cls, index: str | Path, root: Path, digest: bytes) -> IndexedKeyStore | None:
        """The index at ``index`` if it was made from this very directory listing, else None."""
        try:
            with open(index, "rb") as f:
                st = os.fstat(f.fileno())
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # missing, unreadable or empty
            return None
        try:
            magic, found, _acb, n_ds, n_ka = _HEADER.unpack_from(buf, 0)
            size = _HEADER.size + 20 * (n_ds + n_ka)
            if magic != _MAGIC or found != digest or len(buf) < size:
                raise ValueError("not this directory's index")
            store = cls(buf, root)
            last = max(
                (o + n for s in (store._ds, store._ka) for o, n in zip(s.offsets, s.lengths, strict=True)),
                default=0,
            )
            if store._blob + last > len(buf):
                raise ValueError("truncated index")
        except (struct.error, ValueError):
            buf.close()
            return None
        store.index = Path(index)
        store._identity = (st.st_dev, st.st_ino)
        return store

    def ref(self) -> KeyStoreRef:
        """What another process needs to open this very store (:class:`KeyStoreRef`)."""
        if self.index is None or self.path is None:  # pragma: no cover - open() always sets both
            raise ValueError("an index store without its files")
        return KeyStoreRef(
            str(self.path), str(self.index), self.digest, self.key_files, self._identity or (0, 0)
        )

    def maps(self, index: str | Path) -> bool:
        """Whether the file at ``index`` is the very file this store mapped (not removed or replaced since)."""
        try:
            st = os.stat(index)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def __len__(self) -> int:
        """How many certificates the index holds (an EUI with two counts twice)."""
        return len(self._ds.euis) + len(self._ka.euis)

    def entries(self) -> Iterator[tuple[str, int, bytes]]:
        """Every certificate of the index as (usage, EUI, DER), in the stored order (not parsed)."""
        for usage, section in (("ds", self._ds), ("ka", self._ka)):
            for eui, at, n in zip(section.euis, section.offsets, section.lengths, strict=True):
                yield usage, eui, bytes(self._buf[self._blob + at : self._blob + at + n])

    def _certificates(self, usage: str, section: _Section, eui: int) -> tuple[x509.Certificate, ...]:
        key = (usage, eui)
        certs = self._cache.get(key)
        if certs is not None:
            self._cache.move_to_end(key)
            return certs
        if self.corrupt is not None:
            return ()
        out: list[x509.Certificate] = []
        for at, n in section.find(eui):
            start = self._blob + at
            try:
                cert = x509.load_der_x509_certificate(self._buf[start : start + n])
                named = certificate_eui(cert)
            except ValueError as e:
                self._unusable(f"{usage} certificate of {eui:016X} does not parse: {e}")
                return ()
            if named is not None and named != eui:  # the index keys every certificate by the EUI it names
                self._unusable(f"{usage} entry of {eui:016X} holds the certificate of {named:016X}")
                return ()
            out.append(cert)
        if not out:
            return ()
        certs = tuple(out)
        self._cache[key] = certs
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return certs

    def watch_corrupt(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` once when this index is found corrupt, at once if it already was.

        The store is loaded before the service's metrics exist; the service (and each classify worker,
        which relays it) hooks its counter ``duisgw_gbcs_key_index_corrupt_total`` here."""
        self._on_corrupt = callback
        if self.corrupt is not None:
            callback(self.corrupt)

    def _unusable(self, why: str) -> None:
        """A corrupt index (its directory listing unchanged): answer "not held" from now on rather than
        trust any of it, and remove the file so that the next load rebuilds it from the directory. The
        first time is logged at ERROR and reported to the :meth:`watch_corrupt` callback."""
        first = self.corrupt is None
        self.corrupt = why
        self._cache.clear()
        # only the file this store mapped: a reload may have renamed a newer, good index over it
        if self.index is not None and first and self.maps(self.index):
            with contextlib.suppress(OSError):
                os.unlink(self.index)
        if first:
            log.error(
                "GBCS key index corrupt: device signatures are unverifiable until it is rebuilt (duisgw serve "
                "rebuilds it by itself; a reload or the next start does too)",
                extra={"index": str(self.index), "reason": why},
            )
            if self._on_corrupt is not None:
                self._on_corrupt(why)

    def ds_certificate(self, eui: int) -> x509.Certificate | None:
        """The preferred DS certificate of ``eui`` (the newest); :meth:`ds_certificates` gives every one."""
        certs = self._certificates("ds", self._ds, eui)
        return certs[0] if certs else None

    def ka_certificate(self, eui: int) -> x509.Certificate | None:
        """The KA certificate of ``eui``; of several, the one that pairs with ``eui``'s private key when the
        store holds it (:func:`gbcs.keystore.pairing_certificate`), else the preferred one."""
        return pairing_certificate(self._certificates("ka", self._ka, eui), self.ka_private.get(eui))

    def ds_certificates(self, eui: int) -> tuple[x509.Certificate, ...]:
        """Every DS certificate of ``eui``, the preferred one first (:class:`gbcs.keystore.CertificateLists`)."""
        return self._certificates("ds", self._ds, eui)

    def ka_certificates(self, eui: int) -> tuple[x509.Certificate, ...]:
        """Every KA certificate of ``eui``, the preferred one first."""
        return self._certificates("ka", self._ka, eui)

    def ka_private_key(self, eui: int) -> ec.EllipticCurvePrivateKey | None:
        return self.ka_private.get(eui)

    def ds_private_key(self, eui: int) -> ec.EllipticCurvePrivateKey | None:
        """For fixture tools (signing test messages); not part of :class:`gbcs.keystore.KeyStore`."""
        return self.ds_private.get(eui)
