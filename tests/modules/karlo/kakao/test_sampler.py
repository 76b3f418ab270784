"""Karlo's PriorSampler (ldm/modules/karlo/kakao/sampler.py, template.py): the original settings
and loading from a folder of Karlo files, as Stability's unCLIP demo calls it."""
import pytest
import torch

from ldm.modules.karlo.kakao.sampler import PriorSampler
from ldm.modules.karlo.kakao.template import CKPT_PATH, SAMPLING_CONF
from tests.modules.karlo.tiny import TINY_CLIP_DIM, write_tiny_karlo_files


def test_the_default_prior_settings_are_the_originals():
    assert SAMPLING_CONF["default"]["prior_sm"] == "25" and SAMPLING_CONF["default"]["prior_cf_scale"] == 4.0
    assert CKPT_PATH["prior"] == "prior-ckpt-step=01000000-of-01000000.ckpt"


def test_prior_sampler_yields_embeddings_for_a_prompt(tmp_path):
    files = write_tiny_karlo_files(tmp_path)
    (tmp_path / "prior-tiny.ckpt").rename(tmp_path / CKPT_PATH["prior"])
    sampler = PriorSampler(root_dir=str(tmp_path))
    sampler.load_clip("clip-tiny.safetensors")
    sampler.load_prior(CKPT_PATH["prior"], clip_stat_path="ViT-tiny_stats.th", prior_config=files["config"])
    torch.manual_seed(0)
    embeddings = next(sampler("a red circle", bsz=2, progressive_mode="final"))
    assert embeddings.shape == (2, TINY_CLIP_DIM) and bool(torch.isfinite(embeddings).all())
    with pytest.raises(ValueError, match="progressive_mode must be one of loop, stage, final"):
        next(sampler("a red circle", bsz=1, progressive_mode="all"))


def test_from_pretrained_reads_the_original_1b_config_and_names_a_mismatch(tmp_path):
    write_tiny_karlo_files(tmp_path)
    (tmp_path / "prior-tiny.ckpt").rename(tmp_path / CKPT_PATH["prior"])
    with pytest.raises(ValueError, match="ViT-tiny_stats.th does not hold the \\(mean, std\\) pair of 768-d"):
        PriorSampler.from_pretrained(str(tmp_path), "clip-tiny.safetensors", "ViT-tiny_stats.th")
