"""The prior's public API (ldm/modules/karlo/prior.py): ``load_prior`` from the four local files
and ``KarloPrior.sample`` end to end on a tiny random-weight prior (the original config shrunk by
``tests.tiny_configs.TINY_KARLO_PRIOR``: xf_width 64, 2 layers, 2 heads, clip_dim 32) and a tiny CLIP."""
import inspect
import socket

import pytest
import torch

from ldm.modules.karlo import KarloFileError, KarloPrior, load_prior
from tests.modules.karlo.tiny import TINY_CLIP_DIM, write_tiny_karlo_files

PROMPTS = ["a red circle", "a teddy bear on a skateboard", "a red circle"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_karlo_files(tmp_path_factory.mktemp("karlo"))


@pytest.fixture(scope="module")
def prior(files):
    return load_prior(**files)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the prior tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_the_api_has_the_agreed_signatures():
    loader = inspect.signature(load_prior).parameters
    assert list(loader) == ["config", "ckpt", "clip", "clip_stats", "device"] and loader["device"].default == "cpu"
    params = inspect.signature(KarloPrior.sample).parameters
    assert list(params) == ["self", "prompts", "steps", "guidance_scale", "generator", "seeds"]
    assert [params[k].default for k in ("steps", "guidance_scale", "generator", "seeds")] == [25, 4.0, None, None]
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in ("steps", "guidance_scale", "generator"))


def test_sample_gives_finite_embeddings_per_prompt(files, no_network):
    prior = load_prior(**files)
    out = prior.sample(PROMPTS, steps=5, seeds=[1, 2, 3])
    assert out.shape == (3, TINY_CLIP_DIM) and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert out.std() > 0.1


def test_the_same_seed_gives_the_same_embedding_whatever_the_batch(prior):
    batch = prior.sample(PROMPTS, steps=5, seeds=[7, 8, 7])
    alone = prior.sample([PROMPTS[1]], steps=5, seeds=[8])
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[0], batch[2])  # same prompt, same seed
    other = prior.sample([PROMPTS[1]], steps=5, seeds=[9])
    assert not torch.allclose(alone, other)


def test_a_generator_makes_the_batch_reproducible(prior):
    first = prior.sample(PROMPTS[:2], steps=3, generator=torch.Generator().manual_seed(5))
    again = prior.sample(PROMPTS[:2], steps=3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_prompts_and_guidance_change_the_embedding(prior):
    a, b = prior.sample(PROMPTS[:2], steps=3, seeds=[1, 1])
    assert not torch.allclose(a, b)
    weak = prior.sample(PROMPTS[:1], steps=3, guidance_scale=1.0, seeds=[1])
    assert not torch.allclose(weak[0], a)


def test_the_output_is_in_clip_scale(files, prior):
    """Sampling runs in standardised units and returns x * std + mean: with the x_0 prediction at
    its clamp everywhere, the embedding is 10 * std + mean exactly."""
    mean, std = torch.load(files["clip_stats"], weights_only=True)
    with torch.no_grad():
        prior.prior.model.out_proj.bias.fill_(1e4)
    try:
        out = prior.sample(PROMPTS[:1], steps=2, seeds=[0])
    finally:
        loaded = load_prior(**files)
        prior.prior.model.out_proj.bias.copy_(loaded.prior.model.out_proj.bias)
    torch.testing.assert_close(out[0], 10 * std + mean)


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": 0}, "steps must be an integer from 1 to 1000"),
    ({"steps": 1001}, "steps must be an integer from 1 to 1000"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"guidance_scale": 0.0}, "guidance_scale must be a number > 0"),
    ({"seeds": [1]}, "seeds must be 2 integers"),
    ({"seeds": [1, -1]}, "seeds must be 2 integers in"),
    ({"seeds": [1, 2], "generator": torch.Generator()}, "either seeds or generator"),
])
def test_bad_settings_are_one_line_value_errors(prior, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prior.sample(PROMPTS[:2], **kwargs)


def test_prompts_must_be_strings(prior):
    with pytest.raises(TypeError, match="prompts must be strings"):
        prior.sample(["a", 3])
    with pytest.raises(ValueError, match="empty list"):
        prior.sample([])


def _swap(files, key, path):
    return {**files, key: str(path)}


@pytest.mark.parametrize("key,expected", [
    ("config", "Karlo prior config (configs/karlo/prior_1B_vit_l.yaml) not found"),
    ("ckpt", "Karlo prior checkpoint (prior-ckpt-step=01000000-of-01000000.ckpt) not found"),
    ("clip", "CLIP ViT-L/14 weights"),
    ("clip_stats", "CLIP statistics file (ViT-L-14_stats.th) not found"),
])
def test_missing_files_are_named(files, tmp_path, key, expected):
    missing = tmp_path / "nothing-here"
    with pytest.raises(KarloFileError) as err:
        load_prior(**_swap(files, key, missing))
    assert expected in str(err.value) and str(missing) in str(err.value) and "\n" not in str(err.value)


def test_files_given_in_the_wrong_places_are_named(files):
    cases = [("config", files["clip_stats"], "not a readable YAML file"),
             ("clip_stats", files["ckpt"], "does not hold the (mean, std) pair of 32-d CLIP"),
             ("ckpt", files["clip"], "does not fit the prior config"),
             ("clip", files["ckpt"], "has no token_embedding.weight")]
    for key, path, expected in cases:
        with pytest.raises(KarloFileError) as err:
            load_prior(**_swap(files, key, path))
        assert expected in str(err.value) and path in str(err.value) and "\n" not in str(err.value), key


def test_statistics_of_another_size_are_refused(files, tmp_path):
    path = tmp_path / "stats-768.th"
    torch.save((torch.zeros(768), torch.ones(768)), path)
    with pytest.raises(KarloFileError, match="does not hold the \\(mean, std\\) pair of 32-d"):
        load_prior(**_swap(files, "clip_stats", path))


def test_a_config_without_the_prior_entries_is_refused(files, tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("model:\n  hparams:\n    text_ctx: 77\n")
    with pytest.raises(KarloFileError, match="is not a Karlo prior config: it lacks model.hparams.xf_width"):
        load_prior(**_swap(files, "config", path))


def test_a_clip_of_another_width_is_refused(files, tmp_path):
    from ldm.modules.encoders.openclip import CLIPArch
    from ldm.modules.karlo.kakao.models.clip import CustomizedCLIP
    from ldm.util import save_checkpoint

    arch = CLIPArch(embed_dim=64, text_width=64, text_heads=1, text_layers=1, vision_width=0, vision_layers=0,
                    vision_heads=1, patch_size=1, quick_gelu=True, openai_layout=True)
    path = tmp_path / "clip-64.safetensors"
    save_checkpoint(CustomizedCLIP(arch, with_visual=False).state_dict(), str(path))
    with pytest.raises(KarloFileError, match="does not fit the prior \\(clip_dim 32, text_ctx 77\\)"):
        load_prior(**_swap(files, "clip", path))
