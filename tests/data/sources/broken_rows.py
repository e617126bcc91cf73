"""A file in the ChEBI-20 layout full of broken rows, each with the outcome it must get."""

from __future__ import annotations

HEADER = b"CID\tSMILES\tdescription\n"

# (line bytes without the newline, expected reason or None for accepted)
ROWS: list[tuple[bytes, str | None]] = [
    (b"101\tCC(=O)O\tThe molecule is acetic acid.", None),
    (b"", "empty_line"),
    (b"   \t  ", "empty_line"),
    (b"asdkjh qwe", "missing_field"),
    (b"102\tCCO", "missing_field"),
    (b"\t\t", "empty_line"),
    (b"abc\tCCO\tEthanol.", "non_numeric_cid"),
    (b"1.5\tCCO\tEthanol.", "non_numeric_cid"),
    ("١٢٣\tCCO\tArabic-Indic digits are not a CID.".encode(), "non_numeric_cid"),
    (b"-5\tCCO\tEthanol.", "negative_cid"),
    (b"0\tCCO\tEthanol.", "cid_out_of_range"),
    (b"99999999999999999999999\tCCO\tEthanol.", "cid_out_of_range"),
    (b"101\tCCC\tA second row for CID 101.", "duplicate_cid"),
    (b"103\t\tNo SMILES here.", "empty_smiles"),
    (b"104\tC1CC(\tUnclosed ring and branch.", "unparseable_smiles"),
    ("105\tC☃C\tA snowman in a SMILES.".encode(), "unparseable_smiles"),
    (b"106\tCCO\t   ", "empty_description"),
    (b"107\tCCO\tEthanol.\textra column", "malformed_line"),
    (b"\xff\xfe108\tCCO\tBad bytes.", "bad_encoding"),
    (b"109\tCCO\tA NUL \x00 inside.", "malformed_line"),
    (b"110\t" + b"C" * 100_000 + b"\tA very long chain.", "field_too_long"),
    (b"111\tCCO\t" + b"word " * 200_000, "field_too_long"),
    ("112\tCCO\tOdd unicode: \u2028 line separator, \u200b zero width, ☃, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, e\u0301.".encode(), None),
    (b"113\tC/C=C\\\\C\tDoubled backslash as published.\r", None),
    (b"114\tC[C@H](N)C(=O)O\tAlanine.", None),
    (b"115\tC1=CC=CC=C1\tBenzene, last line without a newline.", None),
]


def write(path) -> None:
    body = b"\n".join(line for line, _ in ROWS)  # no newline after the last row
    path.write_bytes(HEADER + body)
