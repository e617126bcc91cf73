"""The data-quality page: written from a real shard version, opened in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepmolm.config import load_params
from deepmolm.data.contracts.gate import validate_shard_version
from deepmolm.reports.data_quality import write_data_report
from tests.browser import headless
from tests.conftest import PARAMS


@pytest.fixture
def report(small_versions, tmp_path) -> tuple[Path, dict]:
    params = load_params(PARAMS, [*small_versions[2], f"paths.reports_dir={tmp_path / 'reports'}",
                                  "report.gallery_size=6"])
    version = small_versions[1]  # the one with rejects, so the page shows them
    contract = validate_shard_version(version, params)
    page = write_data_report(version, params, contract)
    return page, json.loads((page.parent / "summary.json").read_text())


def test_summary_json_holds_the_counts_and_distributions(report):
    page, summary = report
    assert summary["counts"] == {"input_rows": 13, "accepted": 10, "rejected": 3}
    assert summary["ingest"] == {"input_rows": 13, "accepted": 13, "rejected": 0, "rejected_by_reason": {}}, \
        "the raw snapshot's counts: every row the source gave, before featurization"
    assert summary["rejected_by_reason"] == {"kekulization_failed": 1, "sanitization_failed": 1, "wildcard_atom": 1}
    assert summary["contract"]["success"] is False, "3 rejects of 13 rows are over the default thresholds"
    assert summary["contract"]["failed"] == ["reject_rates.reject_rate_under_threshold"]
    assert summary["distributions"]["heavy_atoms"]["n"] == 10
    assert 1 <= summary["distributions"]["heavy_atoms"]["min"] <= summary["distributions"]["heavy_atoms"]["max"]
    assert len(summary["e3fp"]["distinct_identifiers_per_level"]) == 4
    assert all(n > 0 for n in summary["e3fp"]["distinct_identifiers_per_level"])
    assert len(summary["gallery"]) == 6 and len(summary["plots"]) == 4
    for path in summary["plots"]:
        assert Image.open(page.parent / path).size[0] > 500


def test_page_references_only_local_files(report):
    page, summary = report
    text = page.read_text()
    sources = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", text)
    assert sources and not [s for s in sources if s.startswith(("http:", "https:", "//"))], "works offline"
    for source in sources:
        assert (page.parent / source).is_file(), source
    assert "kekulization_failed" in text and str(summary["gallery"][0]) in text


def test_page_renders_in_headless_chromium_with_plots_and_molecules(report, tmp_path):
    page, summary = report
    dom = headless("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = len(summary["plots"]) + len(summary["gallery"])
    assert f'data-images-loaded="{images}/{images}"' in dom.stdout, "every plot and gallery image loaded"
    shot = tmp_path / "report.png"
    result = headless(f"--screenshot={shot}", "--window-size=1400,2400", page.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.shape[:2] == (2400, 1400)
    assert pixels.std() > 20, "the screenshot is not a blank page"
    coloured = (np.abs(pixels[..., 0] - pixels[..., 2]) > 40).mean()
    assert coloured > 0.01, "the plots' coloured bars and the molecules' coloured atoms are visible"
