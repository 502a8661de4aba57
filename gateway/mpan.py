"""The MPAN core check digit: the one place the gateway tells a 13-digit MPAN that cannot be valid.

The 13-digit MPAN core (the MPxN of an electricity meter: AD1 ``PowerOutageEvent/MPxN``, inventory
rows, 8.2 DSPInventory responses, ``MeterIdentity``) ends in a check digit over its first 12 digits:
multiply them in order by the primes 3, 5, 7, 13, 17, 19, 23, 29, 31, 37, 41, 43 (11 is left out),
sum the products, and take the sum modulo 11, then modulo 10. This is the MRA algorithm as published
with the Wikipedia MPAN article's former implementations (collected, CC-BY-SA, at
https://bitbucket.org/tlocke/mpan) and as implemented by the ``mpan`` package of Limejump
(https://github.com/limejump/mpan, ``mpan/mpan.py``: ``PRIMES = [3, 5, 7, ..., 43]``,
``sum % 11 % 10``), whose tests give ``1030006718997`` as a valid core and ``2499999999990`` as one
with a bad check digit (pinned in ``tests/test_mpan.py``).

What a value that fails the check does is decided where it is read: the engine neither learns an MPAN
link from it nor joins an AD1 to meters through it; the inventory import takes the row without that MPxN
and reports it (warning ``bad_mpan_check_digit``, with its line); ``duisgw decode`` reports it among the
warnings of an AD1 (the DUIS decoder itself checks the MPxN's form only: its hot path does not pay for the
check, which the engine makes for every AD1 anyway). Never an error: forwarding never depends on it. Anything that is not 13 ASCII
digits is not judged here (:func:`mpan_check_fails` is False): the callers keep their own rules for it
(an ESME's MPxN must be a valid core, :func:`mpan_core_valid`: the engine joins and learns no other, the
inventory import drops it with the warning ``mpxn_not_mpan``; a gas meter's MPRN is never judged).

Pure: no I/O, no state.
"""

from __future__ import annotations

import sys
from operator import mul

__all__ = [
    "MPAN_PRIMES",
    "check_char_of",
    "mpan_check_digit",
    "mpan_check_fails",
    "mpan_core_valid",
    "with_check_digit",
]

#: The weights of the first 12 digits of an MPAN core, in order.
MPAN_PRIMES = (3, 5, 7, 13, 17, 19, 23, 29, 31, 37, 41, 43)
# The digits are summed as their ASCII codes; each '0' adds 48 * its weight.
_ASCII_ZERO_SUM = 48 * sum(MPAN_PRIMES)
# The check digit, as a character, of every weighted sum of 12 ASCII digits (at most 57 * 268).
_CHECK_CHARS = "".join(str((t - _ASCII_ZERO_SUM) % 11 % 10) for t in range(57 * sum(MPAN_PRIMES) + 1))
# The weighted sum in one big-integer product (the AD1 decode runs this per message): encoded as
# UTF-16 (native order, after a 2-byte BOM) the digits' codes sit 16 bits apart in one integer;
# multiplying it by the weights placed 16 bits apart in reverse order puts the sum of code * weight
# in the 16-bit slot 11 (no slot overflows: 12 * 57 * 43 < 2**16, so no carry reaches it).
_SPREAD = sum(w << (16 * (11 - i)) for i, w in enumerate(MPAN_PRIMES))
_from_bytes = int.from_bytes


def _weighted_sum(digits: str) -> int:
    """Sum of ASCII code * weight over the first 12 characters (the published form of the sum)."""
    return sum(map(mul, digits.encode(), MPAN_PRIMES))


if sys.byteorder == "little":

    def check_char_of(digits: str) -> str:
        """The check digit, as a character, of the first 12 characters of ``digits``, which the caller
        has made sure are ASCII digits (the unchecked core of the functions below)."""
        return _CHECK_CHARS[(_from_bytes(digits.encode("utf-16"), "little") >> 16) * _SPREAD >> 176 & 0xFFFF]

else:  # pragma: no cover - no big-endian host runs the gateway's tests

    def check_char_of(digits: str) -> str:
        """The check digit, as a character, of the first 12 characters of ``digits``, which the caller
        has made sure are ASCII digits (the unchecked core of the functions below)."""
        return _CHECK_CHARS[_weighted_sum(digits)]


def mpan_check_digit(first12: str) -> int:
    """The check digit (0-9) of the first 12 digits of an MPAN core (``ValueError`` unless 12 ASCII digits)."""
    if not (len(first12) == 12 and first12.isascii() and first12.isdigit()):
        raise ValueError(f"not the 12 leading digits of an MPAN core: {first12!r}")
    return int(check_char_of(first12))


def mpan_check_fails(mpxn: str) -> bool:
    """True when ``mpxn`` is 13 ASCII digits whose last is not the check digit of the first 12: an
    MPAN core that cannot be valid. False for a valid core and for anything that is not 13 digits."""
    return len(mpxn) == 13 and mpxn.isascii() and mpxn.isdigit() and check_char_of(mpxn) != mpxn[12]


def mpan_core_valid(mpxn: str) -> bool:
    """True when ``mpxn`` is a 13-digit MPAN core with a right check digit."""
    return len(mpxn) == 13 and mpxn.isascii() and mpxn.isdigit() and check_char_of(mpxn) == mpxn[12]


def with_check_digit(first12: str) -> str:
    """The 13-digit MPAN core of 12 leading digits and their check digit (``ValueError`` unless 12 ASCII digits)."""
    return f"{first12}{mpan_check_digit(first12)}"
