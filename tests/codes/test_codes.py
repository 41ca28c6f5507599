"""Codes: bits from u, LSB-first packing, hex display, validation; and the .npz code file."""

import numpy as np
import pytest

from dsh.codes.bits import (
    bits_from_u,
    check_codes,
    codes_from_u,
    from_hex,
    nbytes_for,
    pack_bits,
    to_binary_string,
    to_hex,
    unpack_codes,
)
from dsh.codes.codefile import CodeFile, load_codes, save_codes
from dsh.errors import DataError


def slow_pack(bits: np.ndarray) -> np.ndarray:
    """Obvious reference: bit i goes to byte i // 8, value 1 << (i % 8)."""
    n, nbits = bits.shape
    out = np.zeros((n, (nbits + 7) // 8), dtype=np.uint8)
    for r in range(n):
        for i in range(nbits):
            if bits[r, i]:
                out[r, i // 8] |= 1 << (i % 8)
    return out


@pytest.mark.parametrize("nbits", [8, 12, 16, 36, 48, 64])
def test_pack_unpack_round_trip(nbits):
    rng = np.random.default_rng(nbits)
    bits = rng.random((50, nbits)) < 0.5
    codes = pack_bits(bits)
    assert codes.dtype == np.uint8 and codes.shape == (50, nbytes_for(nbits))
    np.testing.assert_array_equal(codes, slow_pack(bits))
    np.testing.assert_array_equal(unpack_codes(codes, nbits), bits)
    # padding bits past nbits are zero, so distances between packed codes equal those between bits
    if nbits % 8:
        assert not np.any(codes[:, -1] >> (nbits % 8))


def test_bit_order_on_hand_built_byte():
    # bits 0..7 = 1,0,0,0,0,0,0,1 -> byte 0b1000_0001 = 129 (bit 0 is the least significant)
    bits = np.array([[1, 0, 0, 0, 0, 0, 0, 1]], dtype=bool)
    assert pack_bits(bits)[0, 0] == 129
    # 12 bits: bit 8 set lands in byte 1 at position 0
    bits12 = np.zeros((1, 12), dtype=bool)
    bits12[0, 8] = True
    np.testing.assert_array_equal(pack_bits(bits12), [[0, 1]])


def test_sign_of_zero_is_one():
    u = np.array([[0.0, -0.0, -1e-9, 1e-9, -3.0, 2.0, 0.0, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(bits_from_u(u), [[1, 1, 0, 1, 0, 1, 1, 0]])


def test_hex_matches_seed_notation():
    # the seed README: class 3 -> 0xF7 = 1111 0111, i.e. bit 3 is the only 0
    u = np.array([[1, 1, 1, -1, 1, 1, 1, 1]], dtype=np.float32)
    codes = codes_from_u(u)
    assert to_hex(codes, 8) == ["F7"]
    assert to_binary_string(codes, 8) == ["1111 0111"]
    np.testing.assert_array_equal(from_hex("0xF7", 8), codes)
    c12 = from_hex("a5f", 12)
    assert to_hex(c12, 12) == ["A5F"] and to_binary_string(c12, 12) == ["1010 0101 1111"]


def test_hex_round_trip_random():
    rng = np.random.default_rng(1)
    for nbits in (5, 8, 12, 36, 64):
        codes = pack_bits(rng.random((20, nbits)) < 0.5)
        back = np.concatenate([from_hex(h, nbits) for h in to_hex(codes, nbits)])
        np.testing.assert_array_equal(back, codes)


def test_check_codes_errors():
    with pytest.raises(ValueError, match="uint8"):
        check_codes(np.zeros((2, 1), dtype=np.int64), 8)
    with pytest.raises(ValueError, match="bytes per code"):
        check_codes(np.zeros((2, 2), dtype=np.uint8), 8)
    with pytest.raises(ValueError, match="past nbits"):
        check_codes(np.full((2, 2), 255, dtype=np.uint8), 12)
    with pytest.raises(ValueError, match="8-bit codes have exactly 2"):
        from_hex("1FF", 8)
    with pytest.raises(ValueError, match="bits set past nbits=5"):
        from_hex("3F", 5)
    # nothing is padded or guessed: another length, a doubled prefix, signs, inner blanks, non-ASCII digits
    for bad, why in (("6F", "16-bit codes have exactly 4"), ("0x0x6F", "not a hex code"), ("-6F", "not a hex code"),
                     ("6 F", "not a hex code"), ("\uff16F", "not a hex code"), ("", "not a hex code"),
                     ("0x", "not a hex code")):
        with pytest.raises(ValueError, match=why):
            from_hex(bad, 16 if why.startswith("16") else 8)
    np.testing.assert_array_equal(from_hex(" 0XaBcD ", 16), from_hex("ABCD", 16))
    with pytest.raises(ValueError):
        nbytes_for(0)


def test_code_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    u = rng.standard_normal((30, 12)).astype(np.float32)
    cf = CodeFile(codes_from_u(u), 12, labels=rng.integers(0, 3, 30), u=u,
                  paths=np.array([f"{i}.png" for i in range(30)]), class_names=np.array(["a", "b", "c"]))
    save_codes(tmp_path / "c.npz", cf)
    back = load_codes(tmp_path / "c.npz")
    np.testing.assert_array_equal(back.codes, cf.codes)
    np.testing.assert_array_equal(back.labels, cf.labels)
    np.testing.assert_array_equal(back.u, u)
    assert back.nbits == 12 and back.labels.dtype == np.int64 and list(back.paths)[:2] == ["0.png", "1.png"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_code_file_errors(tmp_path):
    with pytest.raises(DataError, match="no such code file"):
        load_codes(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="bad.npz"):
        load_codes(bad)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, codes=np.zeros((3, 2), np.uint8), nbits=np.int64(8))
    with pytest.raises(DataError, match="bytes per code"):
        load_codes(wrong)
