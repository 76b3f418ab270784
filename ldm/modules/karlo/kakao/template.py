"""Karlo's sampling settings and checkpoint names (``ldm/modules/karlo/kakao/template.py``), and
:class:`BaseSampler`, which loads the CLIP and the prior from a folder of Karlo files."""
from __future__ import annotations

import os

from ldm.modules.karlo.files import read_clip_stats, read_prior_config
from ldm.modules.karlo.kakao.models.clip import CustomizedCLIP, CustomizedTokenizer
from ldm.modules.karlo.kakao.models.prior_model import PriorDiffusionModel

# "prior_sm"/"decoder_sm"/"sr_sm": timestep respacings; "*_cf_scale": guidance scales.
SAMPLING_CONF = {
    "default": {"prior_sm": "25", "prior_n_samples": 1, "prior_cf_scale": 4.0, "decoder_sm": "50",
                "decoder_cf_scale": 8.0, "sr_sm": "7"},
    "fast": {"prior_sm": "25", "prior_n_samples": 1, "prior_cf_scale": 4.0, "decoder_sm": "25",
             "decoder_cf_scale": 8.0, "sr_sm": "7"},
}

CKPT_PATH = {
    "prior": "prior-ckpt-step=01000000-of-01000000.ckpt",
    "decoder": "decoder-ckpt-step=01000000-of-01000000.ckpt",
    "sr_256": "improved-sr-ckpt-step=1.2M.ckpt",
}

PRIOR_CONFIG = "configs/karlo/prior_1B_vit_l.yaml"


class BaseSampler:
    """Settings of ``sampling_type`` ("default" or "fast") and loaders for the files under ``root_dir``."""

    def __init__(self, root_dir: str, sampling_type: str = "fast"):
        if sampling_type not in SAMPLING_CONF:
            raise ValueError(f"sampling_type must be one of {', '.join(SAMPLING_CONF)}, got {sampling_type!r}")
        self._root_dir = root_dir
        conf = SAMPLING_CONF[sampling_type]
        self._prior_sm = conf["prior_sm"]
        self._prior_n_samples = conf["prior_n_samples"]
        self._prior_cf_scale = conf["prior_cf_scale"]
        self._decoder_sm = conf["decoder_sm"]
        self._decoder_cf_scale = conf["decoder_cf_scale"]
        self._sr_sm = conf["sr_sm"]

    def __repr__(self) -> str:
        return (f"Prior, sampling method: {self._prior_sm}, cf_scale: {self._prior_cf_scale}\n"
                f"Decoder, sampling method: {self._decoder_sm}, cf_scale: {self._decoder_cf_scale}\n"
                f"SR(64->256), sampling method: {self._sr_sm}")

    def load_clip(self, clip_path: str) -> None:
        """CLIP ViT-L/14 (text tower) and the tokenizer; ``clip_path`` under ``root_dir``."""
        self._clip = CustomizedCLIP.load_from_checkpoint(os.path.join(self._root_dir, clip_path))
        self._tokenizer = CustomizedTokenizer()

    def load_prior(self, ckpt_path: str, clip_stat_path: str, prior_config: str = PRIOR_CONFIG) -> None:
        """The prior (after :meth:`load_clip`); ``ckpt_path`` and ``clip_stat_path`` under ``root_dir``."""
        config = read_prior_config(prior_config)
        clip_mean, clip_std = read_clip_stats(os.path.join(self._root_dir, clip_stat_path),
                                              int(config.model.hparams.clip_dim))
        self._prior = PriorDiffusionModel.load_from_checkpoint(config, self._tokenizer, clip_mean, clip_std,
                                                               os.path.join(self._root_dir, ckpt_path))
