"""A source whose records leave DeepMoLM's views out (params.yaml featurize.views): MOSES, MuMo's
pretraining corpus, is featurized with its conformer and SFP graphs but without the drawing and the
E3FP tokens that only DeepMoLM reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deepmolm.config import ConfigError, load_params
from deepmolm.data.contracts.frames import NOT_DRAWN, molecule_frame
from deepmolm.data.contracts.gate import validate_shard_version
from deepmolm.data.featurize.record import StepTimer, featurize_row
from deepmolm.data.ingest import ingest_moses
from deepmolm.data.instructions import build_instructions
from deepmolm.data.shards.build import VERSION_SECTIONS, build_version, version_params
from deepmolm.data.shards.parts import iter_shard_parts, read_manifest, read_shards
from deepmolm.data.shards.sfp_table import read_sfp
from deepmolm.reports.data_quality import write_data_report
from tests.browser import headless
from tests.conftest import PARAMS

ROW = {"cid": 7, "smiles": "CC(=O)Nc1ccc(O)cc1", "description": None, "split": None}


def test_a_moses_record_has_its_conformer_but_neither_drawing_nor_e3fp(make_params):
    params = make_params().featurize
    moses_timer, chebi_timer = StepTimer(), StepTimer()
    moses = featurize_row({**ROW, "source": "moses"}, params, timer=moses_timer)
    chebi = featurize_row({**ROW, "source": "chebi20"}, params, timer=chebi_timer)
    assert moses["image_png"] is None and moses["e3fp"] is None
    assert chebi["image_png"].startswith(b"\x89PNG") and len(chebi["e3fp"]) == 11
    assert moses["coords"] == chebi["coords"] and moses["conformer_source"] == "etkdg", "the same conformer"
    assert moses["properties"] == chebi["properties"] and moses["flags"] == chebi["flags"] == []
    assert set(chebi_timer.seconds) - set(moses_timer.seconds) == {"render", "e3fp"}, "the two steps are not run"


def test_a_version_without_the_views_passes_its_contract_and_feeds_only_what_needs_no_view(make_params, tmp_path):
    params = make_params("sources.moses.max_rows=12", "featurize.rows_per_part=6",
                         f"paths.reports_dir={tmp_path / 'reports'}", "report.gallery_size=4")
    summary, sfp = build_version(ingest_moses(params, progress=False).out, tmp_path / "shards", params)
    assert (summary.accepted, summary.rejected, sfp["graphs"]) == (11, 0, 11), "row 8 is an ESOL molecule"
    manifest = read_manifest(summary.out)
    assert manifest["params"]["featurize.views"] == [] and "featurize.render" not in manifest["params"]
    table = read_shards(summary.out)
    assert table.column("image_png").null_count == table.column("e3fp").null_count == 11
    assert table.column("coords").null_count == 0 and read_sfp(summary.out)[0].num_rows == 11

    contract = validate_shard_version(summary.out, params)
    assert contract.success, contract.failed
    # the same records read as a version that should carry both views: every row fails both checks
    frame = molecule_frame(iter_shard_parts(summary.out), params.contracts, 3)
    assert frame["image_png"].isna().all() and not frame["geometry_present_ok"].any()
    assert (molecule_frame(iter_shard_parts(summary.out), params.contracts, None, views=frozenset())["image_png"]
            == NOT_DRAWN).all()

    page = write_data_report(summary.out, params, contract)
    report = json.loads((page.parent / "summary.json").read_text())
    assert report["views"] == [] and report["e3fp"] is None and len(report["gallery"]) == 4
    assert not (page.parent / "plots" / "e3fp.png").exists()
    dom = headless("--dump-dom", page.as_uri())
    images = len(report["plots"]) + len(report["gallery"])
    assert f'data-images-loaded="{images}/{images}"' in dom.stdout, "every plot and drawn gallery image loaded"
    assert "leave out drawing and e3fp" in dom.stdout and "made for this page from the SMILES" in dom.stdout
    drawing = Image.open(page.parent / "gallery" / f"{report['gallery'][0]}.png")
    assert np.asarray(drawing.convert("L")).std() > 10, "a molecule drawn, not a blank square"

    with pytest.raises(ConfigError, match="carries no drawing or e3fp .*featurize.views for 'moses'"):
        build_instructions(summary.out, tmp_path / "instructions", params.instructions)


def test_a_version_of_both_views_hashes_as_before_views_were_a_param(make_params):
    params = make_params()
    assert version_params(params, "chebi20") == params.sections(*VERSION_SECTIONS)
    assert version_params(params, "moses") != version_params(make_params("featurize.views.moses=[drawing]"), "moses")


def test_views_of_an_unknown_source_or_without_a_default_are_config_errors():
    with pytest.raises(ConfigError, match="unknown source 'mosses'"):
        load_params(PARAMS, ["featurize.views.mosses=[]"])
    with pytest.raises(ConfigError, match="featurize.views"):
        load_params(PARAMS, ["featurize.views.moses=[pictures]"])
    with pytest.raises(ConfigError, match="no '\\*' entry"):
        load_params(PARAMS, ["featurize.views={moses: []}"])
