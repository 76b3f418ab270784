"""Karlo's diffusion prior (``PriorDiffusionModel``): CLIP text features -> a CLIP ViT-L/14 image
embedding, by diffusion in the space of image embeddings standardised with ``clip_mean`` and
``clip_std``, with classifier-free guidance (Ho & Salimans 2022) between the prompt and the empty
prompt. The state dict is the transformer's alone (``model.*``); statistics, masks and the empty
prompt's tokens are non-persistent buffers, as in the original."""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch

from ldm.modules.karlo.files import check_prior_config, read_prior_state_dict
from ldm.modules.karlo.kakao.modules import create_gaussian_diffusion
from ldm.modules.karlo.kakao.modules.diffusion.gaussian_diffusion import NoiseFn
from ldm.modules.karlo.kakao.modules.xf import PriorTransformer

XSTART_CLAMP = 10.0  # the x_0 predictions are clamped to [-10, 10] while sampling (standardised units)


class PriorDiffusionModel(torch.nn.Module):
    """The prior of a Karlo config (``model.hparams`` for the transformer, ``diffusion`` for the
    process).

    :param config: the prior's config (``configs/karlo/prior_1B_vit_l.yaml``).
    :param tokenizer: a :class:`~ldm.modules.karlo.kakao.models.clip.CustomizedTokenizer`.
    :param clip_mean: ``[clip_dim]`` mean of the CLIP image embeddings.
    :param clip_std: ``[clip_dim]`` standard deviation of the CLIP image embeddings.
    """

    def __init__(self, config, tokenizer, clip_mean: torch.Tensor, clip_std: torch.Tensor):
        super().__init__()
        self._conf = check_prior_config(config)
        self._model_conf = self._conf.model.hparams
        diffusion = self._conf.diffusion
        self._diffusion_kwargs = {key: diffusion[key] for key in (
            "steps", "learn_sigma", "sigma_small", "noise_schedule", "use_kl", "predict_xstart",
            "rescale_learned_sigmas", "timestep_respacing")}
        self._tokenizer = tokenizer
        with torch.device(clip_mean.device):  # host tensors, also while the network is built on "meta"
            self.register_buffer("clip_mean", clip_mean[None, :], persistent=False)
            self.register_buffer("clip_std", clip_std[None, :], persistent=False)
            self.register_buffer("causal_mask", self.get_causal_mask(), persistent=False)
            cf_token, cf_mask = self.set_cf_text_tensor()
            self.register_buffer("cf_token", cf_token, persistent=False)
            self.register_buffer("cf_mask", cf_mask, persistent=False)
        hp = self._model_conf
        self.model = PriorTransformer(text_ctx=hp.text_ctx, xf_width=hp.xf_width, xf_layers=hp.xf_layers,
                                      xf_heads=hp.xf_heads, xf_final_ln=hp.xf_final_ln, clip_dim=hp.clip_dim)

    @classmethod
    def load_from_checkpoint(cls, config, tokenizer, clip_mean: torch.Tensor, clip_std: torch.Tensor,
                             ckpt_path: str, strict: bool = True) -> "PriorDiffusionModel":
        """The prior with the weights of ``ckpt_path``, which must fit exactly (``strict`` is
        accepted for the original's signature; a partial load is never wanted). The network is
        built on the meta device and takes the checkpoint's tensors, so no memory goes to a
        random initialisation of its billion parameters."""
        with torch.device("meta"):
            prior = cls(config, tokenizer, clip_mean, clip_std)
        state_dict = read_prior_state_dict(ckpt_path, prior)
        prior.load_state_dict(state_dict, strict=True, assign=True)
        return prior.eval().requires_grad_(False)

    @property
    def num_timesteps(self) -> int:
        """The number of diffusion steps of training (``diffusion.steps``)."""
        return int(self._diffusion_kwargs["steps"])

    def set_cf_text_tensor(self):
        """Tokens and mask of the empty prompt, the unconditional input of guidance."""
        return self._tokenizer.padded_tokens_and_mask([""], self._model_conf.text_ctx)

    def get_causal_mask(self) -> torch.Tensor:
        """``[1, n, n]`` additive mask over the text_ctx + 4 positions: -inf above the diagonal."""
        seq_len = self._model_conf.text_ctx + PriorTransformer.ext_len
        return torch.full((seq_len, seq_len), float("-inf")).triu_(1)[None]

    def get_sample_fn(self, timestep_respacing: str) -> Callable:
        """The sampling loop of the respaced process: DDIM for ``"ddimN"``/``"fast27"``, else ancestral."""
        use_ddim = timestep_respacing.startswith(("ddim", "fast"))
        diffusion_kwargs = copy.deepcopy(self._diffusion_kwargs)
        diffusion_kwargs.update(timestep_respacing=timestep_respacing)
        diffusion = create_gaussian_diffusion(**diffusion_kwargs)
        return diffusion.ddim_sample_loop if use_ddim else diffusion.p_sample_loop

    def forward(self, txt_feat: torch.Tensor, txt_feat_seq: torch.Tensor, mask: torch.Tensor,
                cf_guidance_scales: torch.Tensor = None, timestep_respacing: Optional[str] = None,
                noise_fn: Optional[NoiseFn] = None) -> torch.Tensor:
        """Image embeddings ``[B, clip_dim]`` (in CLIP's own scale) for 2B rows of text features:
        the B prompts first, then B rows of the empty prompt. ``cf_guidance_scales`` [B] (> 0);
        ``timestep_respacing`` e.g. ``"25"`` (default: the config's); ``noise_fn(shape)`` draws
        the start and step noise (default: torch's global generator).

        The chain runs on the B prompt rows; each step evaluates the network on them twice (with
        the prompt, with the empty prompt). The original ran a second, unused chain for the
        empty-prompt half and drew its noise too: same formulas, a different noise stream."""
        if cf_guidance_scales is None or not bool((cf_guidance_scales > 0).all()):
            raise ValueError("classifier-free guidance scales (> 0) are required to sample the prior")
        if timestep_respacing is None:
            timestep_respacing = self._diffusion_kwargs["timestep_respacing"]
        batch = txt_feat.shape[0] // 2
        scales = cf_guidance_scales.to(txt_feat.device, txt_feat.dtype).view(-1, 1)

        def guided_model_fn(x_t: torch.Tensor, ts: torch.Tensor, **cond) -> torch.Tensor:
            """The prediction for the prompt, pushed away from the empty prompt's:
            uncond + s * (cond - uncond)."""
            out = self.model(torch.cat([x_t, x_t]), torch.cat([ts, ts]), **cond)
            cond_out, uncond_out = out.split(batch)
            return uncond_out + scales * (cond_out - uncond_out)

        cond = {"text_emb": txt_feat, "text_enc": txt_feat_seq, "mask": mask, "causal_mask": self.causal_mask}
        sample = self.get_sample_fn(str(timestep_respacing))(
            guided_model_fn, (batch, self.model.clip_dim), noise=None, device=txt_feat.device,
            clip_denoised=False, denoised_fn=lambda x: x.clamp(-XSTART_CLAMP, XSTART_CLAMP), model_kwargs=cond,
            noise_fn=noise_fn)
        return sample * self.clip_std + self.clip_mean

