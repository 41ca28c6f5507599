"""Binary codes: from real outputs ``u`` to bits to packed bytes, and back.

Vocabulary used across the package:

- ``u``: the network's real-valued outputs, ``float32[n, nbits]``;
- ``bits``: booleans, ``bool[n, nbits]``, a bit is 1 where ``u >= 0`` (so ``u == 0`` gives 1, never a third value);
- ``codes``: packed bytes, ``uint8[n, ceil(nbits / 8)]``. Bit ``i`` of a code lives in byte ``i // 8`` at position
  ``i % 8``, least significant bit first (faiss's ``IndexBinary`` layout). Padding bits past ``nbits`` are 0, so
  Hamming distances between packed codes equal those between the unpacked bits.

This module knows nothing of torch: codes can come from anywhere.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = [
    "nbytes_for",
    "bits_from_u",
    "pack_bits",
    "unpack_codes",
    "codes_from_u",
    "to_hex",
    "from_hex",
    "to_binary_string",
    "check_codes",
]


def nbytes_for(nbits: int) -> int:
    """Bytes per packed code: ``ceil(nbits / 8)``."""
    if int(nbits) < 1:
        raise InputError(f"nbits must be >= 1, got {nbits}")
    return (int(nbits) + 7) // 8


def bits_from_u(u: np.ndarray) -> np.ndarray:
    """``float[n, nbits]`` -> ``bool[n, nbits]``, 1 where ``u >= 0``."""
    u = np.asarray(u)
    if u.ndim != 2:
        raise InputError(f"u must be 2-D (n, nbits), got shape {u.shape}")
    return u >= 0


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """``bool[n, nbits]`` -> ``uint8[n, ceil(nbits/8)]``, least significant bit first, padding bits 0."""
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise InputError(f"bits must be 2-D (n, nbits), got shape {bits.shape}")
    return np.packbits(bits.astype(bool), axis=1, bitorder="little")


def unpack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """``uint8[n, ceil(nbits/8)]`` -> ``bool[n, nbits]`` (the inverse of :func:`pack_bits`)."""
    codes = check_codes(codes, nbits)
    return np.unpackbits(codes, axis=1, count=int(nbits), bitorder="little").astype(bool)


def codes_from_u(u: np.ndarray) -> np.ndarray:
    """``float[n, nbits]`` -> packed ``uint8[n, ceil(nbits/8)]``."""
    return pack_bits(bits_from_u(u))


def check_codes(codes: np.ndarray, nbits: int, name: str = "codes") -> np.ndarray:
    """Validate a packed code array against ``nbits`` and return it C-contiguous.

    Raises ``ValueError`` with a one-line message for a wrong dtype, rank, width or non-zero padding bits.
    """
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise InputError(f"{name} must be uint8 packed codes, got dtype {codes.dtype}")
    if codes.ndim == 1:
        codes = codes[None, :]
    if codes.ndim != 2:
        raise InputError(f"{name} must be 2-D (n, nbytes), got shape {codes.shape}")
    width = nbytes_for(nbits)
    if codes.shape[1] != width:
        raise InputError(
            f"{name} have {codes.shape[1]} bytes per code, but nbits={nbits} needs {width}"
        )
    pad = width * 8 - int(nbits)
    if pad and codes.size and np.any(codes[:, -1] >> (8 - pad)):
        raise InputError(f"{name} have bits set past nbits={nbits}: they were not made for {nbits} bits")
    return np.ascontiguousarray(codes)


def to_hex(codes: np.ndarray, nbits: int) -> list[str]:
    """Hex strings for display, one per code, most significant bit first.

    The code is read as the integer ``sum(bit_i << i)``, so an 8-bit code whose bits 0..7 are
    ``1,1,1,0,1,1,1,1`` prints as ``F7`` (binary ``1111 0111``), the seed README's notation. Width is
    ``ceil(nbits / 4)`` hex digits.
    """
    codes = check_codes(codes, nbits)
    digits = (int(nbits) + 3) // 4
    return [format(int.from_bytes(row.tobytes(), "little"), f"0{digits}X") for row in codes]


def from_hex(text: str, nbits: int) -> np.ndarray:
    """Parse one hex string written by :func:`to_hex` into ``uint8[1, ceil(nbits/8)]``.

    The string is exactly ``ceil(nbits / 4)`` ASCII hex digits (either case), optionally after one ``0x`` and with
    surrounding blanks; anything else (another length, ``0x0x``, a sign, inner spaces, non-ASCII digits, bits set
    past ``nbits``) raises :class:`InputError` saying what is expected, rather than being padded or guessed at.
    """
    digits = (int(nbits) + 3) // 4
    if not isinstance(text, str):
        raise InputError(f"a hex code must be a string, got {type(text).__name__}")
    body = text.strip()
    if body[:2].lower() == "0x":
        body = body[2:]
    if not body or not all(c in "0123456789abcdefABCDEF" for c in body):
        raise InputError(f"not a hex code: {text!r} (expected {digits} hex digits, 0-9 and A-F)")
    if len(body) != digits:
        raise InputError(f"hex code {text!r} has {len(body)} digits; {nbits}-bit codes have exactly {digits}")
    value = int(body, 16)
    if value >> int(nbits):
        raise InputError(f"hex code {text!r} has bits set past nbits={nbits} (the top digit allows at most "
                         f"{(1 << (int(nbits) - 4 * (digits - 1))) - 1:X})")
    raw = value.to_bytes(nbytes_for(nbits), "little")
    return np.frombuffer(raw, dtype=np.uint8)[None, :].copy()


def to_binary_string(codes: np.ndarray, nbits: int, group: int = 4) -> list[str]:
    """Binary strings, most significant bit first, grouped by ``group`` bits (``"1111 0111"``)."""
    out = []
    for h in to_hex(codes, nbits):
        s = format(int(h, 16), f"0{int(nbits)}b")
        if group:
            # group from the right, so the least significant nibble is always whole
            head = len(s) % group
            parts = ([s[:head]] if head else []) + [s[i : i + group] for i in range(head, len(s), group)]
            s = " ".join(parts)
        out.append(s)
    return out
