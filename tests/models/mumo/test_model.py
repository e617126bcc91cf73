"""The MuMo model on real RDKit conformers: padding does not leak into a molecule's reading, the
structural prior enters exactly from the configured layer, the whole model inherits the SFP's
invariance, the paper preset has the published size, and the tiny preset can learn."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deepmolm.cli import app
from deepmolm.data.featurize.sfp import structured_graph
from deepmolm.models.mumo.configuration import MuMoConfig
from deepmolm.models.mumo.modeling import MuMoForMaskedLM, MuMoForPropertyPrediction, collate_graphs
from deepmolm.models.mumo.presets import mumo_config, mumo_summary
from deepmolm.models.mumo.tokenizer import build_smiles_tokenizer, smiles_pieces
from tests.data.featurize.test_sfp import MOLECULES, conformer, random_rigid_motion

SMILES = list(MOLECULES.values())


@pytest.fixture(scope="module")
def tokenizer():
    return build_smiles_tokenizer(SMILES)


@pytest.fixture(scope="module")
def graphs():
    return [structured_graph(*conformer(smiles)) for smiles in SMILES]


def tiny(tokenizer, **overrides) -> MuMoConfig:
    settings = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=16, num_attention_heads=4,
                    mlp_ratio=2, state_size=8, graph_hidden_size=32, graph_layers=2, injection_layer=9)
    return MuMoConfig(**{**settings, **overrides})


def encode(tokenizer, smiles: list[str]):
    return tokenizer(smiles, padding=True, return_tensors="pt")


def test_smiles_tokens_are_chemical_pieces_and_end_with_the_global_token(tokenizer):
    assert smiles_pieces("C[C@H](Cl)c1ccccc1Br") == ["C", "[C@H]", "(", "Cl", ")", "c", "1", "c", "c", "c", "c", "c", "1", "Br"]
    batch = encode(tokenizer, ["CC", "CCCCO"])
    assert batch["input_ids"][:, -1].tolist() == [tokenizer.convert_tokens_to_ids("[GLOBAL]")] * 2
    assert batch["attention_mask"][0].tolist() == [0, 0, 0, 1, 1, 1]  # left padding
    assert tokenizer.convert_ids_to_tokens(tokenizer("C[Se]C")["input_ids"])[1] == "[UNK]"


def test_left_padding_does_not_change_a_molecules_reading(tokenizer, graphs):
    torch.manual_seed(0)
    model = MuMoForPropertyPrediction(tiny(tokenizer)).eval()
    batch = encode(tokenizer, SMILES)
    assert batch["attention_mask"].sum(1).min() < batch["input_ids"].shape[1]  # some rows are padded
    with torch.no_grad():
        together = model(**batch, graph=collate_graphs(graphs)).logits
        alone = torch.cat([model(**encode(tokenizer, [s]), graph=collate_graphs([g])).logits
                           for s, g in zip(SMILES, graphs, strict=True)])
    assert together.shape == (len(SMILES), 1)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layer", [1, 8, 9, 16])
def test_the_structural_prior_enters_at_the_configured_layer_and_not_before(tokenizer, graphs, layer):
    torch.manual_seed(1)
    model = MuMoForPropertyPrediction(tiny(tokenizer, injection_layer=layer)).eval()
    assert sorted(int(n) for n in model.mumo.injections) == list(range(layer, 17))
    batch = encode(tokenizer, SMILES[:2])
    other = [graphs[2], graphs[3]]  # the same SMILES with other molecules' graphs
    with torch.no_grad():
        own = model(**batch, graph=collate_graphs(graphs[:2]), output_hidden_states=True).hidden_states
        swapped = model(**batch, graph=collate_graphs(other), output_hidden_states=True).hidden_states
        alone = model(**batch, graph=None, output_hidden_states=True).hidden_states
    assert len(own) == 16
    for number in range(1, 17):
        a, b, c = own[number - 1], swapped[number - 1], alone[number - 1]
        if number < layer:
            assert torch.equal(a, b) and torch.equal(a, c), f"layer {number} saw the graph"
        else:
            assert not torch.allclose(a[:, -1], b[:, -1]), f"layer {number} did not take the prior"
    # the injection writes the global token only; the layers above carry it to the rest
    assert torch.equal(own[layer - 1][:, :-1], swapped[layer - 1][:, :-1])


def test_the_model_is_invariant_to_how_the_conformer_is_placed(tokenizer):
    torch.manual_seed(2)
    model = MuMoForPropertyPrediction(tiny(tokenizer)).eval()
    mol, xyz = conformer(SMILES[0])
    batch = encode(tokenizer, SMILES[:1])
    with torch.no_grad():
        before = model(**batch, graph=collate_graphs([structured_graph(mol, xyz)])).logits
        after = model(**batch, graph=collate_graphs([structured_graph(mol, random_rigid_motion(xyz, 3))])).logits
        bent = model(**batch, graph=collate_graphs([structured_graph(mol, xyz + np.random.default_rng(0).normal(0, 0.3, xyz.shape))])).logits
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(before, bent)  # geometry itself does matter


def test_missing_targets_do_not_count_and_masked_lm_ignores_unmasked_positions(tokenizer, graphs):
    torch.manual_seed(3)
    config = tiny(tokenizer, num_targets=2)
    model = MuMoForPropertyPrediction(config)
    batch = encode(tokenizer, SMILES[:2])
    labels = torch.tensor([[0.5, float("nan")], [float("nan"), -1.0]])
    out = model(**batch, graph=collate_graphs(graphs[:2]), labels=labels)
    expected = ((out.logits[0, 0] - 0.5) ** 2 + (out.logits[1, 1] + 1.0) ** 2) / 2
    torch.testing.assert_close(out.loss, expected)
    lm = MuMoForMaskedLM(tiny(tokenizer))
    assert lm.lm_head.weight is lm.mumo.embeddings.weight
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, -2] = batch["input_ids"][0, -2]
    out = lm(**batch, graph=collate_graphs(graphs[:2]), labels=labels)
    target = torch.nn.functional.cross_entropy(out.logits[0, -2:-1], labels[0, -2:-1])
    torch.testing.assert_close(out.loss, target)


def test_paper_preset_counts_about_505m_without_allocating_and_tiny_counts_match(tokenizer):
    from deepmolm.config import DEFAULT_PARAMS, load_params

    params = load_params(DEFAULT_PARAMS, [])
    paper = mumo_summary(mumo_config(params, "paper"))
    assert abs(paper["total"] - 505e6) / 505e6 < 0.02
    assert paper["injected_layers"] == list(range(9, 17)) and paper["layers"].count("attention") == 4
    small = mumo_config(params, "tiny", vocab_size=len(tokenizer))
    assert mumo_summary(small)["total"] == sum(p.numel() for p in MuMoForPropertyPrediction(small).parameters())
    done = CliRunner().invoke(app, ["model", "summary", "--family", "mumo", "--preset", "paper", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.splitlines()[-1])["total"] == paper["total"]


@pytest.mark.learns
def test_the_tiny_model_overfits_a_small_set_and_reloads_as_saved(tokenizer, graphs, tmp_path):
    torch.manual_seed(4)
    model = MuMoForPropertyPrediction(tiny(tokenizer))
    batch = encode(tokenizer, SMILES)
    graph = collate_graphs(graphs)
    targets = torch.tensor([[-1.5], [0.5], [1.5], [-0.5]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(150):
        loss = model(**batch, graph=graph, labels=targets).loss
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = float(model(**batch, graph=graph, labels=targets).loss)
    assert final < 0.02 * first and final < 0.05, (first, final)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = MuMoForPropertyPrediction.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch, graph=graph).logits, model(**batch, graph=graph).logits)


@pytest.mark.parametrize("layer", [1, 16])
def test_a_pretrained_model_loads_with_another_injection_layer_and_starts_the_new_modules_sanely(tokenizer, graphs, tmp_path, layer):
    torch.manual_seed(5)
    MuMoForMaskedLM(tiny(tokenizer)).save_pretrained(tmp_path)
    model = MuMoForPropertyPrediction.from_pretrained(tmp_path, injection_layer=layer).eval()
    assert sorted(int(n) for n in model.mumo.injections) == list(range(layer, 17))
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all() and parameter.abs().max() < 10, name
    first = model.mumo.injections[str(layer)]
    assert torch.equal(first.query_norm.weight, torch.ones_like(first.query_norm.weight))
    assert first.attention.in_proj_weight.std() > 0
    with torch.no_grad():
        out = model(**encode(tokenizer, SMILES), graph=collate_graphs(graphs)).logits
    assert torch.isfinite(out).all()


def test_fine_tuning_moves_the_pretrained_layers_at_their_own_rate_and_takes_its_own_dropout(tokenizer, tmp_path):
    from deepmolm.config import load_params
    from deepmolm.training.strategy import param_groups, schedule

    torch.manual_seed(5)
    MuMoForMaskedLM(tiny(tokenizer)).save_pretrained(tmp_path)
    model = MuMoForPropertyPrediction.from_pretrained(tmp_path, dropout=0.3)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    stage = load_params(overrides=["mumo.finetune.learning_rate=0.002", "mumo.finetune.warmup_ratio=0.1"]).mumo.finetune
    optimizer = torch.optim.AdamW(param_groups(model, 0.01, stage.learning_rate,
                                               lambda name: 1.0 if name.startswith("head.") else 0.1))
    scheduler = schedule(optimizer, stage, total_steps=100)
    with warnings.catch_warnings():  # the schedule alone, no weight moves: "step() before optimizer.step()"
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(30):
            scheduler.step()
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    head = [rates[id(p)] for n, p in model.named_parameters() if n.startswith("head.")]
    body = [rates[id(p)] for n, p in model.named_parameters() if not n.startswith("head.")]
    assert len(rates) == len(list(model.parameters()))  # every weight in exactly one group
    assert len(set(head)) == len(set(body)) == 1 and 0 < head[0] < 0.002
    assert body[0] == pytest.approx(head[0] * 0.1)
    # without a scale: the two groups as before, every weight at the stage's rate
    plain = param_groups(model, 0.01, 0.002)
    assert [(g["weight_decay"], g["lr"]) for g in plain] == [(0.01, 0.002), (0.0, 0.002)]
    assert sum(len(g["params"]) for g in plain) == len(list(model.parameters()))
