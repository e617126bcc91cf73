"""The Fusion Projector: shapes, masks, variants."""

from __future__ import annotations

import pytest
import torch

from deepmolm.models.deepmolm.fusion import (
    PROJECTORS,
    VARIANTS,
    FusionSpec,
    LinearProjector,
    build_projector,
    size_features,
)


def projector(variant: str = "fusion", seed: int = 0, size_features: bool = False, e3fp_sum: bool = False) -> LinearProjector:
    torch.manual_seed(seed)
    spec = FusionSpec(visual_dim=24, hidden_size=32, e3fp_bits=64, num_heads=4, variant=variant,
                      size_features=size_features, e3fp_sum=e3fp_sum)
    return build_projector(spec).eval()


def molecule(atoms: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (atoms, 4), generator=generator)
    ids[-1, 3] = -1  # an atom without a level-3 shell
    return ids


def batch(molecules: list[torch.Tensor]) -> torch.Tensor:
    longest = max(len(m) for m in molecules)
    out = torch.full((len(molecules), longest, 4), -1)
    for i, m in enumerate(molecules):
        out[i, : len(m)] = m
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_maps_visual_tokens_to_the_llm_width(variant):
    visual = torch.randn(2, 16, 24)
    out = projector(variant)(visual, batch([molecule(5, 1), molecule(9, 2)]))
    assert out.shape == (2, 16, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_molecule_without_geometry_gives_finite_outputs(variant):
    visual = torch.randn(2, 16, 24)
    e3fp = batch([molecule(5, 1), torch.full((3, 4), -1)])  # second: every token is padding
    out = projector(variant)(visual, e3fp)
    assert torch.isfinite(out).all()
    assert torch.isfinite(projector(variant)(visual, None)).all()


@pytest.mark.parametrize("extras", [{}, {"size_features": True}, {"e3fp_sum": True}])
@pytest.mark.parametrize("variant", ["fusion", "concat"])
def test_padding_does_not_change_a_molecules_output(variant, extras):
    model = projector(variant, **extras)
    visual = torch.randn(1, 16, 24)
    small = molecule(4, 3)
    alone = model(visual, batch([small]))
    padded = model(torch.cat([visual, torch.randn(1, 16, 24)]), batch([small, molecule(30, 4)]))[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_geometry_changes_the_fused_output_and_gets_gradients():
    model = projector("fusion").train()
    visual = torch.randn(1, 16, 24)
    a, b = model(visual, batch([molecule(6, 5)])), model(visual, batch([molecule(6, 6)]))
    assert not torch.allclose(a, b), "other E3FP identifiers, other output"
    a.sum().backward()
    grad = model.e3fp_embed.weight.grad
    assert grad is not None and grad[:64].abs().sum() > 0 and grad[64].abs().sum() == 0, "padding row stays untouched"


@pytest.mark.learns
def test_size_features_tell_a_molecule_from_itself_repeated():
    """Softmax attention averages: a molecule and the same atoms twice over look alike to it. The
    size features tell them apart, and resolve one atom more at 100 atoms as at 10."""
    visual = torch.randn(1, 16, 24)
    once = molecule(12, 7)
    twice = torch.cat([once, once])
    plain, sized = projector(), projector(size_features=True)
    plain_gap = (plain(visual, batch([once])) - plain(visual, batch([twice]))).abs().mean()
    sized_gap = (sized(visual, batch([once])) - sized(visual, batch([twice]))).abs().mean()
    assert sized_gap > 5 * plain_gap
    features = size_features(torch.tensor([10, 11, 100, 101]))
    assert features.shape == (4, 34)
    step_small, step_large = (features[1] - features[0]).norm(), (features[3] - features[2]).norm()
    assert step_large > 0.1 and step_large > 0.5 * step_small


def test_e3fp_sum_is_additive_over_atoms():
    """A molecule made of two others gets the sum of their contributions: what TPSA and Crippen's logP
    are (per-atom terms by environment), and what attention's average cannot give."""
    model = projector(e3fp_sum=True)
    a, b = molecule(5, 1), molecule(7, 2)
    contribution = {}
    model.sum_in.register_forward_hook(lambda module, args, out: contribution.update(x=args[0]))

    def summed(e3fp):
        model(torch.randn(1, 16, 24), batch([e3fp]))
        return contribution["x"][0]

    torch.testing.assert_close(summed(torch.cat([a, b])), summed(a) + summed(b), atol=1e-5, rtol=1e-5)
    assert summed(torch.cat([a, a])).norm() > 1.9 * summed(a).norm()


def test_size_features_count_atoms_not_shell_identifiers():
    """An atom missing its outer shells is still one atom; padding atoms are none."""
    model = projector(size_features=True)
    e3fp = batch([molecule(5, 1), molecule(3, 2)])
    e3fp[1, 2, 1:] = -1
    counted = {}
    model.size_in.register_forward_hook(lambda module, args, out: counted.update(x=args[0]))
    model(torch.randn(2, 16, 24), e3fp)
    torch.testing.assert_close(counted["x"], size_features(torch.tensor([5, 3])))


@pytest.mark.parametrize("extras", [{}, {"size_features": True}, {"e3fp_sum": True}])
def test_zeroed_e3fp_ablation_ignores_the_geometry(extras):
    model = projector("fusion_zero_e3fp", **extras)
    visual = torch.randn(1, 16, 24)
    torch.testing.assert_close(model(visual, batch([molecule(6, 5)])), model(visual, batch([molecule(11, 6)])))


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="unknown fusion variant 'attention'"):
        FusionSpec(visual_dim=8, hidden_size=8, e3fp_bits=4, variant="attention")
    with pytest.raises(ValueError, match="levels per atom"):
        projector()(torch.randn(1, 4, 24), torch.zeros(1, 3, 5, dtype=torch.long))


def test_each_variant_is_its_own_class_with_the_checkpoint_keys_of_the_format():
    """A variant's parameter names are the checkpoint format: moving code between the classes must
    not rename them (the exported models of earlier runs load by these keys)."""
    shared = {"visual_in.weight", "visual_in.bias"}
    geometry = shared | {"e3fp_embed.weight", "level_embed.weight", "size_in.weight", "size_in.bias",
                         "sum_in.weight", "sum_in.bias"}
    attention = geometry | {"null_kv", "norm_q.weight", "norm_q.bias", "norm_kv.weight", "norm_kv.bias",
                            "norm_ffn.weight", "norm_ffn.bias", "attn.in_proj_weight", "attn.in_proj_bias",
                            "attn.out_proj.weight", "attn.out_proj.bias", "ffn.0.weight", "ffn.0.bias",
                            "ffn.3.weight", "ffn.3.bias"}
    expected = {"linear": shared, "concat": geometry | {"merge.weight", "merge.bias"}, "fusion": attention,
                "fusion_zero_e3fp": attention}
    for variant in VARIANTS:
        model = projector(variant, size_features=True, e3fp_sum=True)
        assert type(model) is PROJECTORS[variant]
        assert set(model.state_dict()) == expected[variant], variant
