"""The columns the contracts derive from a table, checked on hand-made values (the suites then only
compare these columns with thresholds)."""

from __future__ import annotations

import io
import math

import pandas as pd
import pyarrow as pa
from PIL import Image

from deepmolm.config import load_params
from deepmolm.data.contracts.frames import coords_facts, e3fp_facts, png_facts, reject_rates_frame, selfies_index_ok
from tests.conftest import PARAMS


def _png(size=(8, 6), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "white").save(buffer, format="PNG")
    return buffer.getvalue()


def test_png_facts_read_the_header_and_name_what_does_not_open():
    assert png_facts(_png()) == ("PNG", 8, 6, "RGB")
    assert png_facts(_png(mode="L"))[3] == "L"
    assert png_facts(b"not an image") == ("invalid", None, None, None)
    assert png_facts(_png()[:20])[0] == "invalid"  # a truncated file
    assert png_facts(None) == (None, None, None, None)


def test_e3fp_and_coordinate_facts():
    assert e3fp_facts([[1, 2, 3, 4], [5, -1, -1, -1]], level=3) == (2, True, -1, 5)
    assert e3fp_facts([[1, 2, 3]], level=3)[1] is False  # a row short of level + 1 identifiers
    assert e3fp_facts(None, level=3) == (None, None, None, None)
    assert coords_facts([[0.0, 1.0, 2.0]]) == (1, True)
    assert coords_facts([[0.0, math.nan, 2.0]]) == (1, False)
    assert coords_facts([[0.0, 1.0]]) == (1, False)
    assert coords_facts(None) == (None, None)


def test_selfies_index_has_one_entry_per_token_each_a_heavy_atom_or_minus_one():
    assert selfies_index_ok("[C][O]", [0, 1], heavy_atoms=2) is True
    assert selfies_index_ok("[C][Branch1][C][O]", [0, -1, 1, 2], heavy_atoms=3) is True
    assert selfies_index_ok("[C][O]", [0], heavy_atoms=2) is False  # a token without an index
    assert selfies_index_ok("[C][O]", [0, 2], heavy_atoms=2) is False  # no atom 2
    assert selfies_index_ok(None, [0], heavy_atoms=1) is None


def test_reject_rates_have_a_row_for_all_reasons_and_one_per_reason_with_its_threshold():
    contracts = load_params(PARAMS).contracts
    rejects = pa.table({"reason": ["unparseable_smiles", "unparseable_smiles", "wildcard_atom"]})
    frame = reject_rates_frame(rejects, input_rows=100, params=contracts).set_index("reason")
    assert frame.loc["*all*", "count"] == 3 and frame.loc["*all*", "rate"] == 0.03
    assert frame.loc["unparseable_smiles", "rate"] == 0.02 and frame.loc["wildcard_atom", "count"] == 1
    expected = contracts.max_reject_rate.get("unparseable_smiles", contracts.max_reject_rate.get("*", 1.0))
    assert frame.loc["unparseable_smiles", "max_rate"] == expected
    empty = reject_rates_frame(pa.table({"reason": pa.array([], pa.string())}), input_rows=0, params=contracts)
    assert list(empty["reason"]) == ["*all*"] and float(empty["rate"].iloc[0]) == 0.0


def test_the_molecule_frame_is_the_same_built_part_by_part(small_versions):
    """Streaming: the frame of the version's parts one at a time equals the frame of them all at once,
    the SELFIES sample included, and it keeps no drawing, E3FP or coordinates."""
    from deepmolm.data.contracts.frames import molecule_frame, molecule_frames, roundtrip_sample
    from deepmolm.data.shards.parts import iter_shard_parts, read_shards

    version = small_versions[1]
    contracts = load_params(PARAMS, ["contracts.selfies_sample=4"]).contracts
    whole = read_shards(version)
    chosen = roundtrip_sample(whole.column("selfies").to_pylist(), contracts)
    assert len(chosen) == 4
    parts = list(iter_shard_parts(version))
    assert len(parts) > 1 and sum(p.num_rows for p in parts) == whole.num_rows
    streamed = molecule_frame(iter(parts), contracts, 3, chosen)
    at_once = molecule_frame([whole], contracts, 3, chosen)
    pd.testing.assert_frame_equal(streamed, at_once)
    chunks = list(molecule_frames(iter(parts), contracts, 3, chosen, rows=3))  # whole parts: no chunk is a part cut
    assert [len(c) for c in chunks] == [p.num_rows for p in parts if p.num_rows]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), at_once, check_dtype=False)
    assert [len(c) for c in molecule_frames([], contracts, 3)] == [0], "no parts: one empty frame"
    assert len(streamed) == whole.num_rows
    assert streamed["selfies_roundtrip_ok"].notna().sum() == 4
    assert set(streamed["image_png"].dropna()) == {"present"}
    assert {"e3fp", "coords"}.isdisjoint(streamed.columns)
    assert molecule_frame([], contracts, 3).empty
