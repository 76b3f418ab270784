"""The steps every script shares: prompts into batches with per-image seeds, text into
conditioning (with negative prompts for classifier-free guidance), images into latents, a sampler
from noise or from a partly noised image, and latents back into images."""
from __future__ import annotations

import argparse
import contextlib
import math
import random
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from ldm.inference.errors import UsageError
from ldm.inference.precision import float32_scope
from ldm.models.diffusion.sampling_util import CondFn
from ldm.models.diffusion.seeding import ImageNoise, image_seeds
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution


# ---------------------------------------------------------------------------------------------
# Prompts and batches
# ---------------------------------------------------------------------------------------------
def read_prompts(opt: argparse.Namespace) -> List[str]:
    """``--prompt``, or the non-blank lines of ``--from-file`` each repeated ``--repeat`` times
    (from the Python API, a list of prompts, each repeated ``repeat`` times)."""
    if isinstance(opt.prompt, (list, tuple)) and opt.from_file is None:
        if not opt.prompt:
            raise UsageError("prompt: the list of prompts is empty")
        return [str(prompt) for prompt in opt.prompt for _ in range(opt.repeat)]
    if opt.from_file is None:
        return [opt.prompt if opt.prompt is not None else ""]
    path = Path(opt.from_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"--from-file: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--from-file: cannot read {path} ({err})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UsageError(f"--from-file: {path} holds no prompts (it is empty)")
    return [prompt for prompt in prompts for _ in range(opt.repeat)]


def prompt_sources(opt: argparse.Namespace, count: int) -> List[int]:
    """For each of the ``count`` prompts of :func:`read_prompts`, the index of the prompt it
    repeats in a prompt list (which per-prompt input image it takes); all 0 otherwise."""
    if isinstance(opt.prompt, (list, tuple)) and opt.from_file is None:
        return [index // opt.repeat for index in range(count)]
    return [0] * count


@dataclass
class Batch:
    """One call of the sampler: its prompts, the seed of each image and which per-prompt input
    (image, mask, depth map) each image takes."""
    prompts: List[str]
    seeds: List[int]
    sources: List[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


def plan_batches(prompts: Sequence[str], n_samples: int, n_iter: int, seed: int,
                 fixed_code: bool, sources: Optional[Sequence[int]] = None) -> Iterator[Batch]:
    """The originals' loop: ``n_iter`` passes over the prompts in chunks of ``n_samples`` (a
    single ``--prompt`` fills a whole batch). Image ``i`` of the run gets seed ``seed + i``; with
    ``fixed_code`` image ``j`` of every batch gets ``seed + j``, i.e. the same noise each pass."""
    sources = list(sources) if sources is not None else [0] * len(prompts)
    if len(prompts) == 1:
        prompts, sources = list(prompts) * n_samples, sources * n_samples
    starts = range(0, len(prompts), n_samples)
    chunks = [(list(prompts[a:a + n_samples]), list(sources[a:a + n_samples])) for a in starts]
    index = 0
    for _ in range(n_iter):
        for chunk, chunk_sources in chunks:
            first = 0 if fixed_code else index
            yield Batch(prompts=chunk, seeds=image_seeds(seed, first, len(chunk)), sources=chunk_sources)
            index += len(chunk)


SEED_LIMIT = 2 ** 64  # torch generators take seeds below 2**64
RANDOM_SEED = -1     # A1111's "random seed"


def resolve_seed(seed: int) -> int:
    """The run's first seed: ``-1`` draws a random one (A1111's convention; the images'
    parameters record it), else ``seed`` itself."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"--seed must be a whole number, got {seed!r}")
    if seed == RANDOM_SEED:
        return random.SystemRandom().randrange(2 ** 32)
    if seed < 0:
        raise UsageError(f"--seed must be -1 (random) or at least 0, got {seed}")
    return seed


def check_seed_room(seed: int, batches: Sequence[Batch]) -> None:
    """Every image's seed must fit a torch generator (below 2**64)."""
    span = max(s for batch in batches for s in batch.seeds) - seed + 1
    if seed + span > SEED_LIMIT:
        raise UsageError(f"--seed must be -1 (random) or in [0, 2**64 - {span}] for {span} image seed(s), "
                         f"got {seed}")


def check_sampling_numbers(scale: float, eta: float) -> None:
    """Refuse guidance scales and DDIM etas that can only give NaN images (NaN, infinities,
    negative eta) before any work."""
    if not math.isfinite(scale):
        raise UsageError(f"--scale must be a finite number, got {scale}")
    if not (math.isfinite(eta) and eta >= 0.0):
        raise UsageError(f"--ddim_eta must be a finite number >= 0, got {eta}")


# ---------------------------------------------------------------------------------------------
# Conditioning
# ---------------------------------------------------------------------------------------------
def encode_prompts(model: torch.nn.Module, prompts: Sequence[str], negative_prompt: str,
                   scale: float) -> Tuple[Any, Optional[Any]]:
    """``(c, uc)``: the text conditioning, and the unconditional one for classifier-free
    guidance (the negative prompt, "" by default) or None when ``scale`` is 1 (no guidance)."""
    c = model.get_learned_conditioning(list(prompts))
    uc = model.get_learned_conditioning([negative_prompt] * len(prompts)) if scale != 1.0 else None
    return c, uc


def hybrid_conditioning(c_crossattn: Any, c_concat: Optional[torch.Tensor] = None,
                        c_adm: Optional[torch.Tensor] = None) -> Any:
    """The conditioning dict of task models (inpaint/depth: ``c_concat`` + ``c_crossattn``;
    x4 upscaler: also ``c_adm``); plain cross-attention conditioning when nothing is concatenated."""
    if c_concat is None and c_adm is None:
        return c_crossattn
    cond: Dict[str, Any] = {"c_crossattn": [c_crossattn]}
    if c_concat is not None:
        cond["c_concat"] = [c_concat]
    if c_adm is not None:
        cond["c_adm"] = c_adm
    return cond


def guided_pair(c: Any, uc: Optional[Any], c_concat: Optional[torch.Tensor] = None,
                c_adm: Optional[torch.Tensor] = None) -> Tuple[Any, Optional[Any]]:
    """Conditional and unconditional conditioning of a task model: the unconditional one swaps
    only the text and keeps the concatenated image and noise level, as the originals do."""
    cond = hybrid_conditioning(c, c_concat, c_adm)
    uncond = None if uc is None else hybrid_conditioning(uc, c_concat, c_adm)
    return cond, uncond


# ---------------------------------------------------------------------------------------------
# Latents
# ---------------------------------------------------------------------------------------------
def encode_image(model: torch.nn.Module, image: torch.Tensor, noise: ImageNoise) -> torch.Tensor:
    """Latents of one ``[1, 3, H, W]`` image for every image of the batch: a sample of the VAE
    posterior (as ``get_first_stage_encoding`` draws it) made with each image's own noise."""
    posterior = model.encode_first_stage(image)
    if isinstance(posterior, DiagonalGaussianDistribution):
        eps = noise.randn(posterior.mean.shape[1:]).to(posterior.mean.dtype)
        latent = posterior.mean + posterior.std * eps
    else:
        latent = posterior.expand(len(noise.seeds), *posterior.shape[1:])
    return model.get_first_stage_encoding(latent)


def decode_latents(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as the originals map the decoder output: ``clamp((x + 1) / 2, 0, 1)``; a
    pixel-space DDPM (no first stage) samples the images themselves. On a CPU the decoder runs
    in float32 even under bf16 autocast (:func:`~ldm.inference.precision.float32_scope`)."""
    x = _decode_float32_on_cpu(model, z) if hasattr(model, "decode_first_stage") else z
    return torch.clamp((x.float() + 1.0) / 2.0, min=0.0, max=1.0)


def _decode_float32_on_cpu(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    if z.device.type != "cpu":
        return model.decode_first_stage(z)
    with float32_scope(z.device):
        return model.decode_first_stage(z.float())


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
StepListener = Callable[[int, int], None]
# Who hears of each sampler step besides the terminal's bar (the web UI's progress bar); per thread
# and per asyncio task, so two requests served at once each hear only their own steps.
_STEP_LISTENER: ContextVar[Optional[StepListener]] = ContextVar("step_listener", default=None)


@contextlib.contextmanager
def steps_reported_to(listener: Optional[StepListener]) -> Iterator[None]:
    """Within the block, every sampler step calls ``listener(steps done, steps of this sampler
    call)`` (a batch's sampling, or its denoising from an image); None: nobody."""
    token = _STEP_LISTENER.set(listener)
    try:
        yield
    finally:
        _STEP_LISTENER.reset(token)


@contextlib.contextmanager
def step_progress(total: int, description: str) -> Iterator[Callable[..., None]]:
    """The ``callback`` of a sampler call of ``total`` steps: advances a terminal bar and tells the
    listener of :func:`steps_reported_to`, if any."""
    listener = _STEP_LISTENER.get()
    with tqdm(total=total, desc=description, leave=False) as bar:
        def on_step(*_: Any) -> None:
            bar.update(1)
            if listener is not None:
                listener(bar.n, total)
        yield on_step


@dataclass
class SamplingSettings:
    """Steps, DDIM eta, classifier-free guidance scale, and the loss guidance (``cond_fn``, e.g.
    ``--guide-color``; None: none)."""
    steps: int
    eta: float
    scale: float
    cond_fn: Optional[CondFn] = None


def sample_from_noise(sampler: Any, settings: SamplingSettings, shape: Sequence[int], cond: Any,
                      uncond: Optional[Any], noise: ImageNoise, mask: Optional[torch.Tensor] = None,
                      x0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run the sampler from per-image start noise ``x_T``; ``mask``/``x0`` keep the region where
    ``mask`` is 1 equal to the (noised) ``x0`` while sampling (inpainting with a normal model)."""
    x_T = noise.randn(shape)
    with step_progress(settings.steps, "sampling") as on_step:
        try:
            samples, _ = sampler.sample(
                S=settings.steps, batch_size=len(noise.seeds), shape=list(shape), conditioning=cond,
                verbose=False, eta=settings.eta, x_T=x_T, unconditional_guidance_scale=settings.scale,
                unconditional_conditioning=uncond, mask=mask, x0=x0, generator=noise.generators,
                callback=on_step, cond_fn=settings.cond_fn)
        except ValueError as err:  # the samplers refuse options they do not support (e.g. PLMS eta)
            raise UsageError(f"sampler: {err}") from None
    return samples


def encode_steps(strength: float, steps: int) -> int:
    """How many of the ``steps`` DDIM steps img2img runs: ``int(strength * steps)`` as the
    originals, at most ``steps - 1`` (the last index of the DDIM grid)."""
    return min(int(strength * steps), steps - 1)


def sample_from_image(sampler: Any, settings: SamplingSettings, init_latent: torch.Tensor,
                      strength: float, cond: Any, uncond: Optional[Any], noise: ImageNoise) -> torch.Tensor:
    """SDEdit (Meng et al. 2022) with DDIM, as the originals' img2img: noise the image latent to
    DDIM step ``t_enc = int(strength * steps)`` (``stochastic_encode``) and denoise ``t_enc``
    steps back (``decode``). Strength 1 starts from pure noise, as the originals' depth demo."""
    sampler.make_schedule(ddim_num_steps=settings.steps, ddim_eta=settings.eta, verbose=False)
    t_enc = encode_steps(strength, settings.steps)
    eps = noise.randn(init_latent.shape[1:]).to(init_latent.dtype)
    if strength >= 1.0:
        z_enc = eps
    else:
        t = torch.full((init_latent.shape[0],), t_enc, device=init_latent.device, dtype=torch.long)
        z_enc = sampler.stochastic_encode(init_latent, t, noise=eps)
    with step_progress(t_enc, "denoising") as on_step:
        return sampler.decode(z_enc, cond, t_enc, unconditional_guidance_scale=settings.scale,
                              unconditional_conditioning=uncond, verbose=False,
                              callback=on_step, generator=noise.generators,
                              cond_fn=settings.cond_fn)
