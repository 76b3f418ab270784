"""Whole models built from the original inference configs have exactly the state-dict layout
(keys, shapes and order) of the original code, so released checkpoints load strictly.

Models are built on the meta device: the layout is real, no memory is spent on weights.
"""
import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config, load_state_dict_checked
from tests.manifests import MANIFEST_CONFIGS, REPO_ROOT, layout_of, read_manifest


def _build_on_meta(name: str, **overrides):
    config = OmegaConf.load(REPO_ROOT / MANIFEST_CONFIGS[name])
    for dotted, value in overrides.items():
        OmegaConf.update(config, dotted, value)
    with torch.device("meta"):
        return instantiate_from_config(config.model)


@pytest.mark.parametrize("name", sorted(MANIFEST_CONFIGS))
def test_model_from_original_config_has_the_original_layout(name):
    overrides = {}
    if name == "v2-1-stable-unclip-l-inference":
        overrides["model.params.noise_aug_config.params.clip_stats_path"] = None
    model = _build_on_meta(name, **overrides)
    assert layout_of(model) == read_manifest(name)


def test_v1_layout_with_ema_has_the_original_model_ema_buffers():
    model = _build_on_meta("v1-inference", **{"model.params.use_ema": True})
    assert layout_of(model) == read_manifest("extras/v1-inference.use_ema-true")


def test_the_depth_models_midas_keys_load_strictly():
    """The 368 depth_model.* tensors of 512-depth-ema.ckpt (MiDaS DPT-Hybrid) are part of the model:
    nothing of the checkpoint is skipped any more."""
    model = _build_on_meta("v2-midas-inference")
    expected = {k: torch.empty(s, device="meta") for k, s in read_manifest("v2-midas-inference")}
    assert sum(k.startswith("depth_model.") for k in expected) == 368
    report = load_state_dict_checked(model, expected, strict=True, verbose=False)
    assert report.ok and report.lines() == []
