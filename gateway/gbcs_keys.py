"""Load a GBCS key store from a directory (the RTDS/gbcs-parser layout, GBCS.md §7).

Files: ``<eui16hex>-ds.pem`` / ``<eui16hex>-ka.pem`` (X.509 certificates), ``<eui16hex>-ds.key`` /
``<eui16hex>-ka.key`` (PKCS#8 private keys). ``-pp-ka`` (prepayment UTRN) files are not used for
GBCS verification and are skipped. Certificates are indexed by the EUI *in the certificate* (device
SAN hwSerialNum, organisation x500UniqueIdentifier) and by the file name only when the certificate
names none; a file whose certificate names a different EUI than its file name (the RTDS WAN provider's
``ka.pem`` is a copy of supplier 2's) is indexed by the certificate's EUI and listed in ``mismatched``.
Private keys are indexed by file name. Unreadable files are listed in ``skipped`` with the reason.

The folder is walked recursively, entering real sub-folders only: a symbolic link to a folder is not
followed (one pointing back up the tree would loop forever), and a symbolic link to a file is followed
unless it loops or leads nowhere. Such entries are listed in ``skipped`` and logged as warnings, and
everything else loads; both loads (with and without the index) walk the folder the same way.

A *bundle* ``*.certs.pem`` may hold any number of certificates; each is indexed by the EUI it names
and used as DS or KA according to its key usage (digitalSignature / keyAgreement). Test traffic with
thousands of devices ships its device certificates that way.

**Persisted index** (``load_keystore(path, index=FILE)``, what ``duisgw serve`` uses with
``state_dir/gbcs-keys.idx``). Parsing every certificate costs ~140 µs and a few KiB of memory each:
for the ~1.4 M meters of MP102B that is minutes at every start and gigabytes per process (and again in
every classify worker process). The first load parses the directory as above and writes an index
file: every certificate's DER, sorted by (usage, EUI), with the EUIs, offsets and lengths as packed
arrays, the ACB's EUI, and the SHA-256 of the directory listing (relative path, size, mtime of every
file). A later load whose listing digest matches maps the file (``mmap``; worker processes share the
page cache) and parses a certificate only when it is first asked for (binary search, then a bounded
LRU of parsed certificates). Any change in the directory, or an unreadable / foreign index file, makes
the load rebuild the index (written to a temporary file and renamed: never half-written). Private keys
(``*.key``, test fixtures; a gateway has none of its devices') are always read from the directory.

A certificate entry that does not parse, or names another EUI than the one it is filed under, means
the index is corrupt although the directory is unchanged: from then on every lookup answers "not
held" (device signatures unverifiable, never checked against another device's key), the file is
removed so that the next load rebuilds it, and the event is logged once at ERROR and reported to the
:meth:`IndexedKeyStore.watch_corrupt` callback (``duisgw serve`` counts it in
``duisgw_gbcs_key_index_corrupt_total``).
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
from gbcs.keystore import MemoryKeyStore, certificate_eui

log = logging.getLogger("duisgw.gbcs_keys")

__all__ = ["DirectoryKeyStore", "IndexedKeyStore", "listing_digest", "load_keystore", "write_index"]

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
        built = _load_directory(root, listing, unusable)
        write_index(built, index, digest)
        found = IndexedKeyStore.open(index, root, digest)
        if found is None:  # pragma: no cover - the file just written does not read back
            raise OSError(f"GBCS key index {index} could not be read back after writing it")
        found.skipped[:] = [x for x in built.skipped if not x[0].endswith(".key")]
        found.mismatched[:] = built.mismatched
    else:
        found.skipped[:] = unusable  # what the listing could not use (the rest was reported when built)
    _load_private_keys(found, [root / rel for rel, _size, _mtime in listing if rel.endswith(".key")])
    return found


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


# (usage, EUI) -> the file that supplied the certificate held, and whether its name gives that EUI
_Sources = dict[tuple[str, int], tuple[str, bool]]


def _add_certificate(
    store: DirectoryKeyStore, sources: _Sources, name: str, cert: x509.Certificate, usage: str, eui: int,
    *, name_matches: bool,
) -> None:
    """Index ``cert`` under ``eui``. When another file already gave a certificate for the same EUI and
    usage, the one whose file name is that EUI wins (a stray copy must not shadow the device's own
    file, whatever the listing order); the other is listed in ``skipped``."""
    held = sources.get((usage, eui))
    if held is None:
        sources[(usage, eui)] = (name, name_matches)
        store.add_certificate(cert, usage, eui)
        return
    what = f"another {usage.upper()} certificate for {format_eui(eui)}"
    if name_matches and not held[1]:
        store.add_certificate(cert, usage, eui, replace=True)
        sources[(usage, eui)] = (name, name_matches)
        store.skipped.append((held[0], f"{what} is used: {name} (named after that EUI)"))
    else:
        store.skipped.append((name, f"{what} is used: {held[0]}"))


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
                cert = x509.load_pem_x509_certificate(data)
                cert_eui = certificate_eui(cert)
            except (ValueError, UnsupportedAlgorithm) as e:
                store.skipped.append((p.name, f"unreadable certificate: {e}"))
                continue
            if cert_eui is not None and cert_eui != name_eui:
                store.mismatched.append((p.name, cert_eui))
            key = name_eui if cert_eui is None else cert_eui
            _add_certificate(store, sources, p.name, cert, m["usage"], key, name_matches=key == name_eui)
        else:
            _add_private_key(store, p.name, m["usage"], name_eui, data)
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


def _load_private_keys(store: IndexedKeyStore, files: list[Path]) -> None:
    for p in files:
        m = _NAME.match(p.name)
        if m is not None and not m["pp"] and m["ext"] == "key" and (data := _read(store, p)) is not None:
            _add_private_key(store, p.name, m["usage"], int(m["eui"], 16), data)


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
            store.skipped.append((f"{path.name}#{i}", "certificate names no EUI-64"))
            continue
        usage = "ka" if ku.key_agreement else "ds"
        _add_certificate(store, sources, f"{path.name}#{i}", cert, usage, eui, name_matches=False)


# ------------------------------------------------------------------------------------------ persisted index

_MAGIC = b"DUISGWK1"
_HEADER = struct.Struct("<8s32sQQQ")  # magic, listing digest, ACB EUI (2**64-1: none), #DS, #KA
_NO_EUI = 0xFFFF_FFFF_FFFF_FFFF


def write_index(store: MemoryKeyStore, index: str | Path, digest: bytes) -> None:
    """Write ``store``'s certificates as an index file (atomically: a temporary file, then a rename)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    path = Path(index)
    sections: list[tuple[array[int], array[int], array[int]]] = []
    blob = bytearray()
    for certs in (store.ds, store.ka):
        euis, offsets, lengths = array("Q"), array("Q"), array("I")
        for eui in sorted(certs):
            der = certs[eui].public_bytes(Encoding.DER)
            euis.append(eui)
            offsets.append(len(blob))
            lengths.append(len(der))
            blob += der
        sections.append((euis, offsets, lengths))
    acb = _NO_EUI if store.acb_eui is None else store.acb_eui
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two writers never share it
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
    """The sorted EUIs of one usage with where each certificate's DER is."""

    __slots__ = ("euis", "lengths", "offsets")

    def __init__(self, buf: mmap.mmap, at: int, n: int) -> None:
        self.euis = array("Q", buf[at : at + 8 * n])
        at += 8 * n
        self.offsets = array("Q", buf[at : at + 8 * n])
        at += 8 * n
        self.lengths = array("I", buf[at : at + 4 * n])

    def end(self, at: int) -> int:
        return at + 20 * len(self.euis)

    def find(self, eui: int) -> tuple[int, int] | None:
        i = bisect.bisect_left(self.euis, eui)
        if i < len(self.euis) and self.euis[i] == eui:
            return self.offsets[i], self.lengths[i]
        return None


class IndexedKeyStore:
    """A :class:`gbcs.keystore.KeyStore` over a persisted index: certificates parsed on first use."""

    def __init__(self, buf: mmap.mmap, root: Path, *, cache_size: int = 65536) -> None:
        _magic, _digest, acb, n_ds, n_ka = _HEADER.unpack_from(buf, 0)
        at = _HEADER.size
        self._ds = _Section(buf, at, n_ds)
        at = self._ds.end(at)
        self._ka = _Section(buf, at, n_ka)
        self._blob = self._ka.end(at)
        self._buf = buf
        self._cache: OrderedDict[tuple[str, int], x509.Certificate] = OrderedDict()
        self._cache_size = cache_size
        self.path: Path | None = root
        self.acb_eui: int | None = None if acb == _NO_EUI else acb
        self.ka_private: dict[int, ec.EllipticCurvePrivateKey] = {}
        self.ds_private: dict[int, ec.EllipticCurvePrivateKey] = {}
        # files found unusable when the index is built; links and unreadable entries at every load
        self.skipped: list[tuple[str, str]] = []
        self.mismatched: list[tuple[str, int]] = []
        self.index: Path | None = None
        # Why the index was found corrupt at a lookup (then every lookup answers "not held"), else None.
        self.corrupt: str | None = None
        self._on_corrupt: Callable[[str], None] | None = None

    @classmethod
    def open(cls, index: str | Path, root: Path, digest: bytes) -> IndexedKeyStore | None:
        """The index at ``index`` if it was made from this very directory listing, else None."""
        try:
            with open(index, "rb") as f:
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
        return store

    def __len__(self) -> int:
        return len(self._ds.euis) + len(self._ka.euis)

    def _certificate(self, usage: str, section: _Section, eui: int) -> x509.Certificate | None:
        key = (usage, eui)
        cert = self._cache.get(key)
        if cert is not None:
            self._cache.move_to_end(key)
            return cert
        if self.corrupt is not None:
            return None
        where = section.find(eui)
        if where is None:
            return None
        start = self._blob + where[0]
        try:
            cert = x509.load_der_x509_certificate(self._buf[start : start + where[1]])
            named = certificate_eui(cert)
        except ValueError as e:
            self._unusable(f"{usage} certificate of {eui:016X} does not parse: {e}")
            return None
        if named is not None and named != eui:  # the index keys every certificate by the EUI it names
            self._unusable(f"{usage} entry of {eui:016X} holds the certificate of {named:016X}")
            return None
        self._cache[key] = cert
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return cert

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
        if self.index is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.index)
        if first:
            log.error(
                "GBCS key index corrupt: device signatures are unverifiable until the next start rebuilds it",
                extra={"index": str(self.index), "reason": why},
            )
            if self._on_corrupt is not None:
                self._on_corrupt(why)

    def ds_certificate(self, eui: int) -> x509.Certificate | None:
        return self._certificate("ds", self._ds, eui)

    def ka_certificate(self, eui: int) -> x509.Certificate | None:
        return self._certificate("ka", self._ka, eui)

    def ka_private_key(self, eui: int) -> ec.EllipticCurvePrivateKey | None:
        return self.ka_private.get(eui)

    def ds_private_key(self, eui: int) -> ec.EllipticCurvePrivateKey | None:
        """For fixture tools (signing test messages); not part of :class:`gbcs.keystore.KeyStore`."""
        return self.ds_private.get(eui)
