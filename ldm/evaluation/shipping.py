"""Turning a training run of a shapes model into what ships in ``checkpoints/``: an inference
config (training-only settings removed) and a half-precision ``.safetensors`` of the weights,
the EMA weights in place of the UNet's when the run kept them. The diffusion models share the
shipped autoencoder: their configs name it as the first stage's ``ckpt_path`` and their files
leave it out (four copies would not fit the size budget). The result must load strictly."""
from __future__ import annotations

import os
from typing import Dict, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ldm.util import instantiate_from_config, load_checkpoint, load_model_from_config, save_checkpoint

SHIPPED_AUTOENCODER = "checkpoints/shapes-autoencoder-kl-f4.safetensors"

# Parameters of the training configs that only matter while training (or that point at files of
# the training machine): dropped from the shipped configs.
TRAINING_ONLY = ("ckpt_path", "ignore_keys", "monitor", "scheduler_config", "ucg_training", "reset_ema",
                 "reset_num_ema_updates", "train_decoder_only")


def inference_config(training_config: DictConfig, autoencoder: str = SHIPPED_AUTOENCODER) -> DictConfig:
    """The ``model:`` section of a training config, ready to build the shipped model: no EMA copy,
    no fine-tuning or scheduler settings, autoencoder loss replaced by ``torch.nn.Identity``, text
    encoder marked frozen, first stage read from the shipped autoencoder."""
    model = OmegaConf.create(OmegaConf.to_container(training_config.model, resolve=True))
    params = model.params
    for key in TRAINING_ONLY:
        params.pop(key, None)
    if "finetune_keys" in params:
        params.finetune_keys = None
    if "use_ema" in params:
        params.use_ema = False
    if "lossconfig" in params:
        params.lossconfig = {"target": "torch.nn.Identity"}
    if "cond_stage_trainable" in params:
        params.cond_stage_trainable = False
    first_stage = params.get("first_stage_config")
    if first_stage is not None:
        first_stage.params.pop("monitor", None)
        first_stage.params.ckpt_path = autoencoder
    return OmegaConf.create({"model": model})


def shipped_state_dict(state_dict: Dict[str, torch.Tensor], model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The tensors ``model`` holds, taken from a training checkpoint (EMA weights for the UNet when
    present); parameters in float16, buffers (noise schedules, scale factor) kept as they are."""
    ema = {k[len("model_ema."):]: v for k, v in state_dict.items() if k.startswith("model_ema.")}
    parameters = dict(model.named_parameters())
    preloaded = tuple(getattr(model, "preloaded_prefixes", lambda: ())())
    out = {}
    for key in model.state_dict():
        if key.startswith(preloaded):
            continue
        value = state_dict[key]
        shadow = key[len("model."):].replace(".", "") if key.startswith("model.") else None
        if shadow is not None and shadow in ema:
            value = ema[shadow]
        out[key] = value.half() if key in parameters and value.is_floating_point() else value
    return out


def export(training_config: DictConfig, run_checkpoint: str, out_stem: str, header: str = "",
           autoencoder: str = SHIPPED_AUTOENCODER) -> Tuple[str, str]:
    """Write ``<out_stem>.yaml`` and ``<out_stem>.safetensors`` from a run's checkpoint, then load
    them back strictly. A diffusion model's first stage is read from ``autoencoder``, which must
    hold the run's autoencoder. Returns the two paths."""
    config = inference_config(training_config, autoencoder)
    model = instantiate_from_config(config.model)
    state_dict, metadata = load_checkpoint(run_checkpoint)
    missing = [k for k in model.state_dict() if k not in state_dict]
    if missing:
        raise KeyError(f"{run_checkpoint} lacks {len(missing)} tensors of the model, e.g. {missing[:3]}")
    check_same_first_stage(state_dict, model)
    weights = shipped_state_dict(state_dict, model)
    config_path, weights_path = f"{out_stem}.yaml", f"{out_stem}.safetensors"
    os.makedirs(os.path.dirname(os.path.abspath(config_path)), exist_ok=True)
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(header + OmegaConf.to_yaml(config))
    save_checkpoint(weights, weights_path, metadata={k: v for k, v in metadata.items() if k == "global_step"})
    load_model_from_config(OmegaConf.load(config_path), weights_path, device="cpu", verbose=False)
    return config_path, weights_path


LATENT_SPACE_PREFIXES = ("encoder.", "quant_conv.")


def check_same_first_stage(state_dict: Dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """The run's (frozen) autoencoder must encode, in half precision, exactly as the shipped one
    the exported config points at: same encoder side, hence the same latent space. The decoder
    side may differ, so a decoder fine-tuned after the run (``train_decoder_only``) still serves it."""
    if "first_stage_model." not in getattr(model, "preloaded_prefixes", lambda: ())():
        return
    for key, value in model.first_stage_model.state_dict().items():
        if not key.startswith(LATENT_SPACE_PREFIXES):
            continue
        trained = state_dict[f"first_stage_model.{key}"]
        if not torch.equal(trained.half(), value.half()):
            shipped = model.first_stage_model.ckpt_loaded_from
            raise ValueError(f"the run's autoencoder encodes differently from {shipped} "
                             f"(first_stage_model.{key}); it cannot share the shipped one")


@torch.no_grad()
def latent_scale_factor(autoencoder, count: int = 512, seed: int = 0) -> float:
    """1 / std of the autoencoder's latents (posterior samples) of ``count`` training renders: the
    ``scale_factor`` that gives the diffusion model unit-variance latents (Rombach et al. 2022,
    sec. 4.3 and appendix G; what ``scale_by_std`` computes from one batch)."""
    from ldm.data.shapes import ShapesDataset

    data = ShapesDataset(length=count, seed=seed, split="train")
    images = torch.from_numpy(np.stack([data[i]["image"] for i in range(count)])).permute(0, 3, 1, 2)
    torch.manual_seed(seed)
    latents = torch.cat([autoencoder.encode(chunk).sample() for chunk in images.split(64)])
    return float(1.0 / latents.flatten().std())
