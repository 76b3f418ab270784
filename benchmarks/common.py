"""Helpers the benchmark scripts share: diffusers twins of our UNet, VAE and CLIP text encoder on
the same weight tensors (converted with diffusers' own single-file functions), alternating timing,
and resident-memory readings.

Imported by the scripts in this folder as ``benchmarks.common`` (they put the repository root on
``sys.path``); diffusers is imported lazily, so importing this module needs only torch.
"""
from __future__ import annotations

import dataclasses
import os
import re
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "sd1": REPO_ROOT / "configs/stable-diffusion/v1-inference.yaml",
    "sd2": REPO_ROOT / "configs/stable-diffusion/v2-inference.yaml",
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

Timing = Tuple[float, float]  # (wall-clock seconds, CPU seconds of this process)


def resolve_dtype(name: Optional[str], device: torch.device) -> torch.dtype:
    """``--dtype`` by name; by default fp16 on CUDA and fp32 elsewhere."""
    if name:
        return DTYPES[name]
    return torch.float16 if device.type == "cuda" else torch.float32


def perturb_zero_parameters(model: torch.nn.Module, std: float = 0.02) -> None:
    """Give zero-initialised layers small random values so the outputs are not trivially 0."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=std)


def random_unet(name: str, seed: int = 0) -> Tuple[torch.nn.Module, DictConfig]:
    """Our UNet of the original config ``name`` (``CONFIGS``) in float32 with seeded random weights,
    zero-initialised layers perturbed, in eval mode; and its config."""
    from ldm.util import instantiate_from_config

    torch.manual_seed(seed)
    config = OmegaConf.load(CONFIGS[name])
    unet = instantiate_from_config(config.model.params.unet_config)
    perturb_zero_parameters(unet)
    return unet.eval(), config


def seeded_unet_inputs(config: DictConfig, batch: int, latent: int, timestep: int = 500,
                       seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, t, context)`` for one call of the config's UNet: a seeded normal latent of side ``latent``,
    every sample at ``timestep``, and a seeded normal 77-token context of the config's width."""
    params = config.model.params.unet_config.params
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, params.in_channels, latent, latent, generator=generator)
    context = torch.randn(batch, 77, params.context_dim, generator=generator)
    return x, torch.full((batch,), timestep), context


def prefixed_state_dict(module: torch.nn.Module, prefix: str) -> Dict[str, torch.Tensor]:
    """``module``'s state dict under the key prefix it has inside a full LDM checkpoint."""
    return {prefix + k: v for k, v in module.state_dict().items()}


def _load_shared(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor],
                 source: Optional[torch.nn.Module] = None) -> torch.nn.Module:
    """Load ``state_dict`` into a model built on the meta device, keeping the given tensors;
    non-persistent buffers (not in any state dict) are taken from ``source`` by name."""
    model.load_state_dict(state_dict, strict=True, assign=True)
    if source is not None:
        source_buffers = dict(source.named_buffers())
        for name, buffer in list(model.named_buffers()):
            if buffer.is_meta and name in source_buffers:
                owner, _, leaf = name.rpartition(".")
                model.get_submodule(owner).register_buffer(leaf, source_buffers[name], persistent=False)
    stale = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if stale:
        raise RuntimeError(f"diffusers model kept meta tensors after loading: {', '.join(stale[:5])}")
    return model.eval()


def diffusers_unet(unet: torch.nn.Module, config: DictConfig, image_size: int = 512):
    """diffusers' ``UNet2DConditionModel`` holding ``unet``'s weight tensors (no copy)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    warnings.filterwarnings("ignore", message=".*image_size.*", category=FutureWarning)
    checkpoint = prefixed_state_dict(unet, UNET_PREFIX)
    plain_config = OmegaConf.to_container(config, resolve=True)
    diffusers_config = create_unet_diffusers_config_from_ldm(plain_config, checkpoint, image_size=image_size)
    with torch.device("meta"):
        twin = UNet2DConditionModel(**diffusers_config)
    return _load_shared(twin, convert_ldm_unet_checkpoint(checkpoint, diffusers_config))


def diffusers_vae(vae: torch.nn.Module, config: DictConfig):
    """diffusers' ``AutoencoderKL`` with ``vae``'s weights (shared where the layouts agree)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    checkpoint = prefixed_state_dict(vae, VAE_PREFIX)
    diffusers_config = create_vae_diffusers_config_from_ldm(OmegaConf.to_container(config, resolve=True), checkpoint)
    with torch.device("meta"):
        twin = AutoencoderKL(**diffusers_config)
    return _load_shared(twin, convert_ldm_vae_checkpoint(checkpoint, diffusers_config))


def diffusers_text_encoder(cond_stage_model: torch.nn.Module):
    """transformers' ``CLIPTextModel`` with the weights of our ``FrozenCLIPEmbedder``, converted
    with diffusers' ``convert_ldm_clip_checkpoint`` (what ``from_single_file`` does for SD 1.x)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    inner = cond_stage_model.transformer.text_model  # our text model's, or the level around a CLIPTextModel
    text_config = inner.config
    if not isinstance(text_config, CLIPTextConfig):  # ours (a ClipTextConfig dataclass)
        text_config = CLIPTextConfig(**dataclasses.asdict(text_config))
    state_dict = convert_ldm_clip_checkpoint(prefixed_state_dict(cond_stage_model.transformer, TEXT_PREFIX))
    with torch.device("meta"):
        twin = CLIPTextModel(text_config)
    expected = set(twin.state_dict())
    if not expected & set(state_dict):  # transformers >= 5 has no ``text_model`` level
        state_dict = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    state_dict = {k: v for k, v in state_dict.items() if k in expected}
    missing = expected - set(state_dict)
    if missing:
        raise RuntimeError(f"converted text encoder lacks {', '.join(sorted(missing)[:5])}")
    return _load_shared(twin, state_dict, source=inner)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> Timing:
    """(wall-clock seconds, CPU seconds of this process) of one call."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(fns: Dict[str, Callable[[], object]], repeats: int, device: torch.device) -> Dict[str, List[Timing]]:
    """Time every function ``repeats`` times, interleaved and with the order reversed on every
    other repetition, so that load drift on a shared machine hits all of them alike."""
    names = list(fns)
    times: Dict[str, List[Timing]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(timed(fns[name], device))
    return times


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``call``, after one untimed call (warm-up)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_times(times: List[Timing]) -> Timing:
    """Median wall-clock and median CPU seconds of a list of timings."""
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


class ForwardClock:
    """Adds up the process CPU seconds spent inside the forwards of ``modules`` (hooks; set
    ``seconds`` to 0 to start again)."""

    def __init__(self, modules: List[torch.nn.Module]):
        self.seconds = 0.0
        for module in modules:
            module.register_forward_pre_hook(self._start)
            module.register_forward_hook(self._stop)

    def _start(self, *args) -> None:
        self._began = time.process_time()

    def _stop(self, *args) -> None:
        self.seconds += time.process_time() - self._began


# ---------------------------------------------------------------------------------------------
# Resident memory (Linux /proc)
# ---------------------------------------------------------------------------------------------
def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The process's peak resident set size since start or the last :func:`reset_peak_rss`."""
    with open("/proc/self/status") as handle:
        return int(re.search(r"VmHWM:\s+(\d+) kB", handle.read()).group(1)) * 1024


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True
