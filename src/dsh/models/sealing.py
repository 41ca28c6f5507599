"""A model file's own sha256, carried inside it: the seal of the ONNX and safetensors files ``dsh export`` writes.

Neither format checks its bytes (a flipped bit in a weight loads, and gives other codes), so dsh writes, among the
file's metadata, an entry ``dsh_sha256`` whose value is the sha256 (64 lowercase hex digits) of the whole file with
that value read as 64 ``0`` characters. The entry is found by its exact encoding (``prefix``: how the format writes
the key just before the value), so a file is checked on its raw bytes, before any parser sees them: a damaged file
is refused in one line without being parsed, and a file that passes is byte for byte the one written. A seal is a
checksum, not a signature: anyone can seal a file, so the loaders still check everything a file says. No torch here.
"""

from __future__ import annotations

import hashlib
import re

from ..errors import ModelFileError

DIGEST_KEY = "dsh_sha256"
PLACEHOLDER = "0" * 64
# how each format writes the entry up to its value: ONNX, a StringStringEntryProto (key: field 1, value: field 2,
# 64 bytes long); safetensors, a key of the JSON header's "__metadata__"
ONNX_PREFIX = b"\x0a" + bytes([len(DIGEST_KEY)]) + DIGEST_KEY.encode() + b"\x12\x40"
SAFETENSORS_PREFIX = b'"' + DIGEST_KEY.encode() + b'":"'
_HEX = re.compile(rb"[0-9a-f]{64}")


def _find(data: bytes, prefix: bytes) -> int | None:
    """Where the 64 digits after ``prefix`` start, if ``prefix`` occurs exactly once."""
    at = data.find(prefix)
    if at < 0 or data.find(prefix, at + 1) >= 0:
        return None
    return at + len(prefix)


def seal(data: bytes, prefix: bytes) -> bytes:
    """``data``, whose entry after ``prefix`` holds :data:`PLACEHOLDER`, with the placeholder replaced by the
    sha256 of ``data``."""
    start = _find(data, prefix)
    if start is None or data[start : start + 64] != PLACEHOLDER.encode():
        raise ValueError(f"expected one {DIGEST_KEY} entry holding the placeholder")
    digest = hashlib.sha256(data).hexdigest().encode()
    return data[:start] + digest + data[start + 64 :]


def check_seal(data: bytes, prefix: bytes, source: str) -> None:
    """Raise a one-line :class:`ModelFileError` naming ``source`` unless ``data`` carries its seal and its bytes
    are those the seal was made of."""
    start = _find(data, prefix)
    if start is None:
        raise ModelFileError(f"{source}: not a dsh model file, or damaged, or written before model files carried "
                             f"a checksum (no {DIGEST_KEY} entry): export it again with dsh export")
    claimed = data[start : start + 64]
    if not _HEX.fullmatch(claimed) or \
            hashlib.sha256(data[:start] + PLACEHOLDER.encode() + data[start + 64 :]).hexdigest().encode() != claimed:
        raise ModelFileError(f"{source}: checksum mismatch: the model file is damaged or was altered")
