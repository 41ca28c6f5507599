"""Binary codes, with no torch: real outputs ``u`` -> bits -> packed ``uint8[n, nbits/8]`` codes (bit i of a code
is bit i % 8 of byte i // 8), Hamming distances, and the ``.npz`` code file (whole or in shards)."""

from __future__ import annotations

from .bits import (
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
from .codefile import CodeFile, join_code_files, load_codes, save_codes
from .hamming import pairwise_hamming

__all__ = [
    "CodeFile",
    "bits_from_u",
    "check_codes",
    "codes_from_u",
    "from_hex",
    "join_code_files",
    "load_codes",
    "nbytes_for",
    "pack_bits",
    "pairwise_hamming",
    "save_codes",
    "to_binary_string",
    "to_hex",
    "unpack_codes",
]
