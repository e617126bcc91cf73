"""The `deepmolm` command as a user runs it: a subprocess, its exit code, its last JSON line."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli, tmp_overrides
from tests.data.sources import broken_rows


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def with_tmp(tmp_path, *args):
    sets = [x for o in tmp_overrides(tmp_path) for x in ("-S", o)]
    return [*args, *sets]


@pytest.mark.parametrize(("split", "rows"), [("test", 3300), ("validation", 3301)])
def test_ingest_chebi20_split_from_the_offline_mirror(tmp_path, split, rows):
    result = run_cli(*with_tmp(tmp_path, "data", "ingest", "--source", "chebi20", "--split", split, "--json"), check=True)
    summary = last_json(result.stdout)
    assert summary["input_rows"] == rows
    assert summary["accepted"] + summary["rejected"] == rows
    assert set(summary) >= {"input_rows", "accepted", "rejected", "rejected_by_reason", "out", "snapshot"}
    assert summary["out"].startswith(str(tmp_path / "raw" / "chebi20"))
    assert "ingest chebi20" in result.stderr, "progress shows on stderr without --quiet"


def test_ingest_broken_tsv_exits_zero_and_accounts_for_every_row(tmp_path):
    path = tmp_path / "broken.tsv"
    broken_rows.write(path)
    result = run_cli(*with_tmp(tmp_path, "data", "ingest", "--source", "tsv", "--path", str(path), "--json", "--quiet"))
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert summary["input_rows"] == len(broken_rows.ROWS)
    assert summary["accepted"] + summary["rejected"] == summary["input_rows"]
    assert sum(summary["rejected_by_reason"].values()) == summary["rejected"]
    assert result.stderr == "", "--quiet prints no progress"


def test_human_output_states_the_row_balance(tmp_path):
    path = tmp_path / "broken.tsv"
    broken_rows.write(path)
    result = run_cli(*with_tmp(tmp_path, "data", "ingest", "--source", "tsv", "--path", str(path), "--quiet"), check=True)
    assert "26 input = 5 accepted + 21 rejected" in result.stdout
    assert "duplicate_cid" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["data", "ingest", "--source", "tsv", "--path", "/nonexistent.tsv"], 1, "no such file"),
        (["data", "ingest", "--source", "tsv"], 2, "needs --path"),
        (["data", "ingest", "--source", "mystery"], 2, "unknown source"),
        (["data", "ingest", "--source", "pubchem"], 2, "exactly one of --cids or --cid-file"),
        (["data", "ingest", "--source", "chebi20", "--cids", "1"], 2, "does not take --cids"),
        (["data", "ingest", "--source", "chebi20", "-S", "ingest.rows_per_part=0"], 2, "ingest.rows_per_part"),
        (["data", "ingest", "--source", "chebi20", "-S", "sources.chebi20.mirror=/nowhere"], 1, "has no test.txt"),
        (["config", "show", "-S", "sources.pubchem.batchsize=3"], 2, "unknown key 'sources.pubchem.batchsize'"),
        (["data", "featurize", "--input", "/nowhere"], 1, "no raw-table snapshot in /nowhere"),
        (["data", "featurize", "--input", "/nowhere", "-S", "featurize.dask.workers=0"], 2, "featurize.dask.workers"),
        (["eval", "robustness", "--model", "/nowhere"], 1, "/nowhere is not a DeepMoLM checkpoint"),
        (["eval", "robustness", "-S", "eval.robustness.coordinate_noise=[0.1,0.1]"], 2, "eval.robustness.coordinate_noise"),
    ],
)
def test_unusable_input_exits_non_zero_with_a_message(tmp_path, args, code, message):
    result = run_cli(*with_tmp(tmp_path, *args, "--json"))
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    error = last_json(result.stdout)
    assert error["success"] is False and message in error["error"]


def test_wrong_layout_file(tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("cid,smiles\n1,CCO\n")
    result = run_cli(*with_tmp(tmp_path, "data", "ingest", "--source", "tsv", "--path", str(path)))
    assert result.returncode == 1 and "wrong layout" in result.stderr
    assert not (tmp_path / "raw" / "tsv").exists() or not any((tmp_path / "raw" / "tsv").iterdir())


def test_params_file_option_and_config_show(tmp_path):
    from tests.conftest import PARAMS

    custom = tmp_path / "custom.yaml"
    custom.write_text(PARAMS.read_text().replace("concurrency: 3", "concurrency: 2"))
    result = run_cli("config", "show", "--params", str(custom), "-S", "ingest.rows_per_part=7", "--json", check=True)
    resolved = last_json(result.stdout)
    assert resolved["sources"]["pubchem"]["concurrency"] == 2
    assert resolved["ingest"]["rows_per_part"] == 7
    assert resolved["paths"]["raw_dir"] == str(tmp_path / "data" / "raw"), "relative to the params file"


def test_summary_reads_the_newest_snapshot(tmp_path):
    run_cli(*with_tmp(tmp_path, "data", "ingest", "--source", "chebi20", "--split", "test", "--quiet"), check=True)
    result = run_cli("data", "summary", str(tmp_path / "raw" / "chebi20"), "--json", check=True)
    assert last_json(result.stdout)["input_rows"] == 3300


@pytest.mark.parametrize("group", [[], ["data"], ["data", "ingest"], ["data", "featurize"], ["train"], ["eval"], ["report"], ["config"]])
def test_help_is_there_for_every_group(group):
    result = run_cli(*group, "--help", check=True)
    assert "Usage" in result.stdout
    if group == ["data", "ingest"]:
        for option in ("--source", "--split", "--path", "--cids", "--cid-file", "--out", "--params", "-S", "--json", "--quiet"):
            assert option in result.stdout


# A command refused for its arguments or for a path that is not a model answers before torch and
# transformers load (several seconds of imports); `deepmolm report pipeline` never loads them for
# its own module. Each is run in a fresh interpreter that then lists what it imported.
ANSWERED_AT_ONCE = [
    (["predict", "--checkpoint", "/nowhere", "--smiles", "CCO", "--task", "poem"], 2, "--task 'poem'"),
    (["predict", "--checkpoint", "/nowhere", "--smiles", "CCO"], 1, "/nowhere is not a DeepMoLM checkpoint"),
    (["eval", "run", "--model", "/nowhere"], 1, "/nowhere is not a DeepMoLM checkpoint"),
    (["eval", "robustness", "--model", "/nowhere"], 1, "/nowhere is not a DeepMoLM checkpoint"),
]
IMPORTED = """
import contextlib, io, sys
from deepmolm.cli import app
err = io.StringIO()
with contextlib.redirect_stderr(err):
    try:
        app(args=sys.argv[1:], prog_name="deepmolm")
    except SystemExit as exit:
        code = exit.code
import deepmolm.reports.pipeline
print(code, "torch" in sys.modules, "transformers" in sys.modules, err.getvalue().replace(chr(10), " "))
"""


@pytest.mark.parametrize(("args", "code", "message"), ANSWERED_AT_ONCE)
def test_a_refused_command_answers_before_the_model_libraries_load(args, code, message):
    done = subprocess.run([sys.executable, "-c", IMPORTED, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    exit_code, torch_loaded, transformers_loaded, stderr = done.stdout.strip().split(" ", 3)
    assert (int(exit_code), torch_loaded, transformers_loaded) == (code, "False", "False"), done.stdout + done.stderr
    assert message in " ".join(stderr.split())
