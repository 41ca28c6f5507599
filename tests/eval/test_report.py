"""The class hash table against a hand-built example."""

import numpy as np

from dsh.codes.bits import from_hex
from dsh.eval.report import class_code_table, format_markdown


def codes_of(*hexes):
    return np.concatenate([from_hex(h, 8) for h in hexes])


def test_table_on_hand_built_codes():
    # class 0: three F7, one F6 (1 bit away); class 1: two F3 (1 bit from F7); class 2: two 00
    codes = codes_of("F7", "F7", "F7", "F6", "F3", "F3", "00", "00")
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    t = class_code_table(codes, labels, 8, ["zero", "one", "two"])
    r0, r1, r2 = t.rows
    assert (r0.code_hex, r0.code_binary, r0.count) == ("F7", "1111 0111", 4)
    assert r0.share_exact == 0.75 and r0.mean_distance == 0.25
    assert (r0.nearest_class, r0.nearest_distance, r0.flagged) == ("one", 1, True)
    assert (r1.code_hex, r1.nearest_class, r1.nearest_distance) == ("F3", "zero", 1)
    # 00 vs F3 = 6 bits, 00 vs F7 = 7 bits
    assert (r2.code_hex, r2.nearest_class, r2.nearest_distance, r2.flagged) == ("00", "one", 6, False)
    assert t.close_pairs == [("zero", "one", 1)]
    assert t.distinct_codes
    md = format_markdown(t)
    assert "0xF7" in md and "zero/one (1 bit)" in md
    assert t.to_dict()["classes"][0]["code_hex"] == "F7"


def test_shared_typical_code_is_reported():
    codes = codes_of("0F", "0F", "0F")
    t = class_code_table(codes, np.array([0, 1, 1]), 8)
    assert not t.distinct_codes
    assert t.close_pairs == [("0", "1", 0)]
