"""PriorDiffusionModel (ldm/modules/karlo/kakao/models/prior_model.py): the original state-dict
layout (manifest derived from the original code, docs/KARLO.md), strict loading, and the guided
prediction of a sampling step."""
import pytest
import torch
from omegaconf import OmegaConf

from ldm.modules.karlo import KarloFileError
from ldm.modules.karlo.kakao.models.clip import CustomizedTokenizer
from ldm.modules.karlo.kakao.models.prior_model import PriorDiffusionModel
from ldm.util import save_checkpoint
from tests.manifests import REPO_ROOT, layout_of, read_manifest
from tests.modules.karlo.tiny import TINY_CLIP_DIM, tiny_prior
from tests.tiny_configs import KARLO_PRIOR_CONFIG, tiny_karlo_prior_config

MANIFEST = "karlo-prior_1B_vit_l"


@pytest.fixture(scope="module")
def tokenizer():
    return CustomizedTokenizer()


def test_prior_from_the_original_config_has_the_manifest_layout(tokenizer):
    config = OmegaConf.load(REPO_ROOT / KARLO_PRIOR_CONFIG)
    with torch.device("meta"):
        prior = PriorDiffusionModel(config, tokenizer, torch.zeros(768), torch.ones(768))
    assert layout_of(prior) == read_manifest(MANIFEST)
    assert len(read_manifest(MANIFEST)) == 256
    assert sum(p.numel() for p in prior.parameters()) == 1_022_028_544


def test_the_statistics_masks_and_empty_prompt_are_not_in_the_state_dict(tokenizer):
    prior = tiny_prior()
    buffers = dict(prior.named_buffers())
    assert set(buffers) == {"clip_mean", "clip_std", "causal_mask", "cf_token", "cf_mask"}
    assert not set(buffers) & set(prior.state_dict())
    assert prior.causal_mask.shape == (1, 81, 81) and prior.causal_mask[0, 0, 1] == float("-inf")
    assert prior.cf_token[0, :3].tolist() == [49406, 49407, 0] and prior.cf_mask[0, :3].tolist() == [True, True, False]


def test_the_tiny_prior_follows_the_manifest_with_its_own_sizes():
    """The dotlist-shrunk config keeps the layout: the manifest's keys for 2 blocks, its shapes with
    2048 -> 64 (width), 768 -> 32 (CLIP), 6144 -> 192, 8192 -> 256."""
    sizes = {2048: 64, 768: TINY_CLIP_DIM, 6144: 192, 8192: 256, 81: 81, 1: 1}
    expected = [(key, tuple(sizes[d] for d in shape)) for key, shape in read_manifest(MANIFEST)
                if not key.startswith("model.transformer.resblocks.") or int(key.split(".")[3]) < 2]
    assert layout_of(tiny_prior()) == expected


def test_load_from_checkpoint_loads_the_weights_without_building_them_first(tmp_path, tokenizer):
    source = tiny_prior()
    path = tmp_path / "prior.ckpt"
    save_checkpoint(source.state_dict(), str(path))
    loaded = PriorDiffusionModel.load_from_checkpoint(tiny_karlo_prior_config(), tokenizer, torch.zeros(32),
                                                      torch.ones(32), str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not any(t.is_meta for t in list(loaded.parameters()) + list(loaded.buffers()))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


@pytest.mark.parametrize("change,message", [
    (lambda sd: sd.pop("model.prd_emb"), "1 tensors missing (e.g. model.prd_emb)"),
    (lambda sd: sd.update({"model.padding_embedding": torch.zeros(81, 64)}), "not used by the prior"),
    (lambda sd: sd.update({"model.out_proj.bias": torch.zeros(7)}), "wrong shape"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(tmp_path, tokenizer, change, message):
    state_dict = dict(tiny_prior().state_dict())
    change(state_dict)
    path = tmp_path / "prior.ckpt"
    save_checkpoint(state_dict, str(path))
    with pytest.raises(KarloFileError) as err:
        PriorDiffusionModel.load_from_checkpoint(tiny_karlo_prior_config(), tokenizer, torch.zeros(32),
                                                 torch.ones(32), str(path))
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


class FixedPredictions(torch.nn.Module):
    """Stands in for the transformer: predicts ``cond`` for the prompt rows, ``uncond`` for the rest."""

    def __init__(self, cond, uncond, clip_dim):
        super().__init__()
        self.cond, self.uncond, self.clip_dim, self.text_ctx = cond, uncond, clip_dim, 77

    def forward(self, x, timesteps, text_emb=None, **kwargs):
        half = x.shape[0] // 2
        return torch.cat([self.cond.expand(half, -1), self.uncond.expand(half, -1)])


def test_one_step_returns_the_guided_clamped_prediction_in_clip_scale():
    """With one step (t = 0 only, where the posterior mean is the x_0 prediction and no noise is
    added): clamp(uncond + s (cond - uncond), -10, 10) * std + mean. Hand-computed for s = 4:
    uncond 1, cond 2 -> 5; uncond 0, cond 3 -> 12 -> 10; uncond -1, cond -2 -> -5."""
    mean, std = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 0.5, 1.0])
    prior = PriorDiffusionModel(tiny_karlo_prior_config(), CustomizedTokenizer(), mean, std)
    prior.model = FixedPredictions(torch.tensor([[2.0, 3.0, -2.0]]), torch.tensor([[1.0, 0.0, -1.0]]), 3)
    feats, seq, mask = torch.zeros(2, 3), torch.zeros(2, 77, 3), torch.ones(2, 77, dtype=torch.bool)
    out = prior(feats, seq, mask, torch.tensor([4.0]), timestep_respacing="1")
    torch.testing.assert_close(out, torch.tensor([[5 * 2.0 + 0.5, 10 * 0.5 - 1.0, -5 * 1.0 + 2.0]]))


def test_guidance_scale_one_ignores_the_empty_prompt_and_other_scales_do_not():
    prior = tiny_prior()
    generator = torch.Generator().manual_seed(0)
    feats, seq = torch.randn(2, 32, generator=generator), torch.randn(2, 77, 32, generator=generator)
    mask = torch.zeros(2, 77, dtype=torch.bool)
    mask[:, :5] = True
    other_feats, other_seq = feats.clone(), seq.clone()
    other_feats[1] += 1.0
    other_seq[1] -= 1.0

    def run(scale, f, s):
        noise = torch.Generator().manual_seed(1)
        return prior(f, s, mask, torch.tensor([scale]), timestep_respacing="3",
                     noise_fn=lambda shape: torch.randn(shape, generator=noise))

    with torch.no_grad():
        torch.testing.assert_close(run(1.0, feats, seq), run(1.0, other_feats, other_seq))
        assert not torch.allclose(run(4.0, feats, seq), run(4.0, other_feats, other_seq))


def test_guidance_scales_must_be_given_and_positive():
    prior = tiny_prior()
    feats, seq, mask = torch.zeros(2, 32), torch.zeros(2, 77, 32), torch.ones(2, 77, dtype=torch.bool)
    for scales in (None, torch.tensor([0.0])):
        with pytest.raises(ValueError, match="guidance scales"):
            prior(feats, seq, mask, scales, timestep_respacing="2")
