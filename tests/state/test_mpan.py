"""The MPAN core check digit (gateway/mpan.py): known cores from public sources, a hand-worked sum,
and properties over generated cores."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mpan import (
    MPAN_PRIMES,
    check_char_of,
    mpan_check_digit,
    mpan_check_fails,
    mpan_core_valid,
    with_check_digit,
)

# 1030006718997 parses as a core in the tests of the public ``mpan`` package (Limejump,
# tests/test_mpan.py) and passes the check; 2499999999990 is listed there as "Bad checksum".
PUBLIC_VALID = "1030006718997"
PUBLIC_BAD_CHECK = "2499999999990"

twelve_digits = st.text(st.sampled_from("0123456789"), min_size=12, max_size=12)


def _reference_check_digit(first12: str) -> int:
    """The algorithm as published: digit i times the i-th prime of 3..43 (11 left out), summed, mod 11, mod 10."""
    return sum(int(d) * p for d, p in zip(first12, MPAN_PRIMES, strict=True)) % 11 % 10


def test_the_weights_are_the_primes_from_3_to_43_without_11() -> None:
    assert MPAN_PRIMES == (3, 5, 7, 13, 17, 19, 23, 29, 31, 37, 41, 43)


def test_known_valid_core_from_a_public_source_passes() -> None:
    assert mpan_core_valid(PUBLIC_VALID)
    assert not mpan_check_fails(PUBLIC_VALID)
    assert mpan_check_digit(PUBLIC_VALID[:12]) == 7


def test_known_bad_check_digit_from_a_public_source_fails() -> None:
    # 2*3 + 4*5 + 9*(7+13+17+19+23+29+31+37+41+43) = 2366; 2366 mod 11 = 1; the core ends in 0
    assert mpan_check_digit(PUBLIC_BAD_CHECK[:12]) == 1
    assert mpan_check_fails(PUBLIC_BAD_CHECK)
    assert not mpan_core_valid(PUBLIC_BAD_CHECK)


def test_a_sum_of_ten_mod_eleven_gives_check_digit_zero_like_a_sum_of_zero() -> None:
    # 2 * 5 = 10: mod 11 is 10, mod 10 folds it onto 0, the check digit of the all-zero prefix too
    assert mpan_check_digit("020000000000") == 0
    assert mpan_check_digit("000000000000") == 0
    assert mpan_core_valid("0200000000000") and mpan_check_fails("0200000000001")


def sum_mod(first12: str) -> int:
    return sum(int(d) * p for d, p in zip(first12, MPAN_PRIMES, strict=True)) % 11


@given(twelve_digits)
def test_check_digit_agrees_with_the_published_algorithm(first12: str) -> None:
    assert mpan_check_digit(first12) == _reference_check_digit(first12)


@given(twelve_digits, st.integers(0, 9))
def test_exactly_one_last_digit_makes_a_valid_core(first12: str, last: int) -> None:
    core = f"{first12}{last}"
    valid = last == _reference_check_digit(first12)
    assert mpan_core_valid(core) is valid
    assert mpan_check_fails(core) is not valid


@given(twelve_digits, st.integers(0, 11), st.integers(1, 9))
def test_any_single_digit_change_of_a_valid_core_is_caught_unless_its_weight_is_a_multiple_of_eleven(
    first12: str, position: int, delta: int
) -> None:
    core = first12 + str(_reference_check_digit(first12))
    changed = core[:position] + str((int(core[position]) + delta) % 10) + core[position + 1 :]
    # no weight is a multiple of 11, so the sum mod 11 always moves; only the fold of 10 onto 0 hides it
    if sum_mod(changed[:12]) in (0, 10) and sum_mod(core[:12]) in (0, 10):
        assert mpan_core_valid(changed)
    else:
        assert mpan_check_fails(changed)


@pytest.mark.parametrize(
    "value",
    ["", "123456789012", "12345678901234", "123456789012X", "1234567890 23", "１２３４５６７８９０１２３"],
)
def test_values_that_are_not_thirteen_ascii_digits_are_not_judged(value: str) -> None:
    assert not mpan_check_fails(value)
    assert not mpan_core_valid(value)


@pytest.mark.parametrize(
    "value", ["12345678901", "1234567890123", "12345678901X", "１２３４５６７８９０１２"]
)
def test_check_digit_of_anything_but_twelve_ascii_digits_is_a_value_error(value: str) -> None:
    with pytest.raises(ValueError, match="12 leading digits"):
        mpan_check_digit(value)


@given(st.text(st.sampled_from("0123456789"), min_size=12, max_size=20))
def test_the_one_product_form_equals_the_published_sum_for_any_run_of_digits(digits: str) -> None:
    assert check_char_of(digits) == str(_reference_check_digit(digits[:12]))


@pytest.mark.parametrize(
    "digits", ["000000000000", "999999999999", "9999999999999", "0999999999990", "9000000000009"]
)
def test_the_one_product_form_has_no_carry_at_the_extremes(digits: str) -> None:
    assert check_char_of(digits) == str(_reference_check_digit(digits[:12]))


@given(twelve_digits)
def test_with_check_digit_makes_a_valid_core_of_any_twelve_digits(first12: str) -> None:
    core = with_check_digit(first12)
    assert core[:12] == first12 and mpan_core_valid(core)
