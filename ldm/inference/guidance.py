"""Loss-guidance presets: ``cond_fn``s for the samplers' loss-guidance hook
(``ldm.models.diffusion.sampling_util.LossGuidance``): a colour (``--guide-color``) and a CLIP
text prompt (``--guide-clip``, with a transformers CLIP model from a local directory)."""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ldm.inference.errors import UsageError
from ldm.models.diffusion.sampling_util import CondFn, append_dims, discrete_alpha_cumprod

DEFAULT_GUIDE_REGION = "image"  # where --guide-color pulls: the whole image (the tutorial), or the coloured object
DEFAULT_GUIDE_SCALE = 300.0  # chosen on the shipped shapes model: benchmarks/guidance_color.py (README)
KEEP_LAYOUT_GUIDE_SCALE = 3000.0  # --guide-scale's default with --guide-keep-layout (the same benchmark, README)
# The default strength of --guide-clip: that of diffusers' CLIP-guided Stable Diffusion community
# pipeline (the same spherical-distance loss on latents); not tuned here (no CLIP weights offline).
DEFAULT_GUIDE_CLIP_SCALE = 100.0
# CLIP's image normalisation (the OpenAI preprocessing), per RGB channel of images in [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decoded_image(model: torch.nn.Module, denoised: torch.Tensor) -> torch.Tensor:
    """The predicted x0 as an image in [-1, 1] with gradients: through the first stage's decoder
    for a latent model (``decode_first_stage`` is no_grad), the sample itself for a pixel model."""
    decode = getattr(model, "differentiable_decode_first_stage", None)
    return (decode(denoised) if decode is not None else denoised).float()


ImageLoss = Callable[[torch.Tensor], torch.Tensor]
"""A scaled loss of a batch of images in [-1, 1]: a scalar, the sum of the per-image losses (so
each image's gradient does not depend on the batch)."""


def loss_guidance(x0_loss: Callable[[torch.Tensor], torch.Tensor]) -> CondFn:
    """The cond_fn of a loss on the predicted x0 (latent, or pixels for a pixel model): minus its
    gradient with respect to x (a log-probability-like objective)."""
    def cond_fn(x: torch.Tensor, t: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        return -torch.autograd.grad(x0_loss(denoised), x)[0]

    return cond_fn


def image_loss_guidance(model: torch.nn.Module, image_loss: ImageLoss) -> CondFn:
    """The cond_fn of ``image_loss`` on the decoded predicted x0 (``decoded_image``), through the decoder."""
    return loss_guidance(lambda denoised: image_loss(decoded_image(model, denoised)))


def capped_guidance(model: torch.nn.Module, cond_fn: CondFn, max_step: float) -> CondFn:
    """``cond_fn`` with its change of the noise prediction, sqrt(1 - a_t) g (``LossGuidance``),
    at most ``max_step`` in root-mean-square per image and step: a larger gradient is scaled down,
    a smaller one left alone (per-step gradient clipping). Unclipped, the first, noisiest steps
    magnify the pull on the predicted x0 by (1 - a_t) / sqrt(a_t) and remake the layout."""
    alphas_cumprod = model.alphas_cumprod.detach()

    def capped(x: torch.Tensor, t: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        grad = cond_fn(x, t, denoised)
        a_t = append_dims(discrete_alpha_cumprod(alphas_cumprod, t).to(grad.device, grad.dtype), grad.ndim)
        step = (1 - a_t).sqrt() * grad
        rms = append_dims(step.flatten(1).pow(2).mean(1).sqrt(), grad.ndim)
        return grad * (max_step / rms.clamp_min(max_step))

    return capped


GUIDE_REGIONS = ("object", "image")


def object_weights(image: torch.Tensor) -> torch.Tensor:
    """Per-pixel weights [B, 1, H, W] that pick out coloured objects: the HSV saturation
    ``(max - min) / max`` of each pixel of an image in [0, 1], detached (the weights say where to
    pull, they are not pulled on themselves). Grey and black backgrounds weigh about nothing."""
    rgb = image.detach()
    high, low = rgb.amax(dim=1, keepdim=True), rgb.amin(dim=1, keepdim=True)
    return (high - low) / high.clamp_min(1e-3)


GUIDE_COLOR_SPACES = ("rgb", "hue", "latent")  # latent: ldm.inference.latent_color_guidance
DEFAULT_GUIDE_COLOR_SPACE = "rgb"


def opponent_chroma(pixels: torch.Tensor) -> torch.Tensor:
    """The chroma of RGB pixels [B, 3, ...] as a 2-vector [B, 2, ...] in the opponent plane
    (r - (g + b) / 2, sqrt(3) / 2 (g - b)): its angle is the hue (HSV's hexagonal hue is an
    approximation of it), its length the chroma; grey pixels sit at the origin."""
    r, g, b = pixels.unbind(1)
    return torch.stack([r - (g + b) / 2, math.sqrt(3) / 2 * (g - b)], dim=1)


def pixel_distance(pixels: torch.Tensor, rgb: Sequence[float], space: str) -> torch.Tensor:
    """Per-pixel distance [B, 1, H, W] of pixels in [0, 1] to the colour ``rgb``. ``"rgb"``: the
    mean squared channel difference. ``"hue"``: 1 - cos of the angle between the pixel's and the
    colour's opponent chroma (``opponent_chroma``), times the pixel's chroma, detached: its gradient
    turns the chroma toward the colour's hue without lengthening or shortening it (brightness and
    saturation, what sets an object apart from its background, stay as they are), with the same
    strength for a pale pixel as for a vivid one, and none for a grey one."""
    target = torch.tensor(list(rgb), device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    if space == "rgb":
        return (pixels - target).pow(2).mean(1, keepdim=True)
    chroma, target_chroma = opponent_chroma(pixels), opponent_chroma(target)
    length = chroma.norm(dim=1, keepdim=True).clamp_min(1e-6)
    cosine = (chroma * F.normalize(target_chroma, dim=1)).sum(1, keepdim=True) / length
    return length.detach() * (1 - cosine)


def is_grey(rgb: Sequence[float]) -> bool:
    """Whether the colour has equal channels, so no hue to guide toward (the hue loss refuses it)."""
    return max(rgb) == min(rgb)


def color_loss(rgb: Sequence[float], scale: float, region: str = "image", space: str = "rgb") -> ImageLoss:
    """``scale`` times the mean distance (``pixel_distance`` in ``space``) of the image's pixels
    (in [0, 1]) to ``rgb`` (each in [0, 1]), per image. ``region="image"`` averages over every
    pixel, the colour loss of the diffusers guidance tutorial with ``space="rgb"`` (it tints the
    whole picture, background first); ``"object"`` weights each pixel by :func:`object_weights`, so
    the pull goes to the coloured object."""
    if len(rgb) != 3 or not all(0. <= c <= 1. for c in rgb):
        raise ValueError(f"the guide colour must be three numbers in [0, 1], got {list(rgb)}")
    if region not in GUIDE_REGIONS:
        raise ValueError(f"the guide region must be one of {', '.join(GUIDE_REGIONS)}, got {region!r}")
    if space not in ("rgb", "hue"):
        raise ValueError(f"the image-space guide colour space must be rgb or hue, got {space!r} (the latent "
                         "space's loss is ldm.inference.latent_color_guidance.latent_color_loss)")
    if space == "hue" and is_grey(rgb):
        raise ValueError(f"a grey guide colour has no hue to guide toward, got {list(rgb)}")

    def loss(image: torch.Tensor) -> torch.Tensor:
        pixels = (image + 1) / 2
        distance = pixel_distance(pixels, rgb, space)
        if region == "image":
            return scale * distance.flatten(1).mean(1).sum()
        weights = object_weights(pixels)
        per_image = (weights * distance).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1e-6)
        return scale * per_image.sum()

    return loss


def color_guidance(model: torch.nn.Module, rgb: Sequence[float], scale: float, region: str = "image") -> CondFn:
    """Guidance toward the colour ``rgb`` (``color_loss``) of the decoded predicted x0."""
    return image_loss_guidance(model, color_loss(rgb, scale, region))


@dataclass(frozen=True)
class ColorGuidanceRequest:
    """``--guide-color R,G,B`` (0-255) at ``--guide-scale``, in ``--guide-region`` and
    ``--guide-color-space``: checked before the model is loaded, made into the colour loss, and
    recorded in the images' parameters."""
    rgb: tuple
    scale: float
    region: str = DEFAULT_GUIDE_REGION
    space: str = DEFAULT_GUIDE_COLOR_SPACE
    keep_layout: bool = False

    @classmethod
    def from_options(cls, opt: Any) -> Optional["ColorGuidanceRequest"]:
        """The request of ``opt`` (None without ``guide_color``); a bad colour, scale, region or
        space is a one-line UsageError."""
        color = getattr(opt, "guide_color", None)
        if color is None:
            return None
        region = _choice(opt, "guide_region", GUIDE_REGIONS, DEFAULT_GUIDE_REGION)
        space = _choice(opt, "guide_color_space", GUIDE_COLOR_SPACES, DEFAULT_GUIDE_COLOR_SPACE)
        rgb = parse_color(color)
        if space == "hue" and is_grey(rgb):
            raise UsageError(f"--guide-color-space hue needs a colour with a hue, got the grey {color!r}")
        keep_layout = bool(getattr(opt, "guide_keep_layout", False))
        if keep_layout and space != "latent":
            raise UsageError(f"--guide-keep-layout pulls toward a recoloured latent: it needs --guide-color-space "
                             f"latent, got {space!r}")
        if keep_layout and region != "image":
            raise UsageError("--guide-keep-layout pulls every pixel toward the recoloured image; leave "
                             f"--guide-region out (got {region!r})")
        scale = getattr(opt, "guide_scale", None)
        if scale is None:
            scale = KEEP_LAYOUT_GUIDE_SCALE if keep_layout else DEFAULT_GUIDE_SCALE
        return cls(rgb, checked_scale(scale, "--guide-scale"), region, space, keep_layout)

    @property
    def in_latent_space(self) -> bool:
        return self.space == "latent"

    def image_loss(self) -> ImageLoss:
        return color_loss([c / 255.0 for c in self.rgb], self.scale, self.region, self.space)

    def latent_loss(self, model: torch.nn.Module,
                    reference: Optional[torch.Tensor] = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """The loss on the predicted x0 latent of ``--guide-color-space latent``
        (:mod:`~ldm.inference.latent_color_guidance`); with ``keep_layout``, toward ``reference`` (the
        latents sampled without guidance) with its objects recoloured."""
        from ldm.inference.latent_color_guidance import (
            guide_color_latent,
            latent_color_loss,
            layout_loss,
            layout_target,
        )

        rgb = [c / 255.0 for c in self.rgb]
        if self.keep_layout:
            if reference is None:
                raise ValueError("--guide-keep-layout needs the latents sampled without guidance")
            return layout_loss(layout_target(model, reference, rgb), self.scale)
        return latent_color_loss(guide_color_latent(model, rgb), self.scale, self.region)

    def parameters(self) -> Dict[str, object]:
        found = {"Guidance color": ",".join(str(c) for c in self.rgb), "Guidance scale": self.scale,
                 "Guidance region": self.region, "Guidance color space": self.space}
        if self.keep_layout:
            found["Guidance keeps layout"] = True
        return found


def _choice(opt: Any, name: str, choices: Sequence[str], default: str) -> str:
    """``opt.<name>`` (``default`` when absent), one of ``choices`` (else a one-line UsageError)."""
    value = getattr(opt, name, default)
    if value not in choices:
        raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {value!r}")
    return value


def checked_scale(value: Any, flag: str) -> float:
    """A guidance strength: a finite number >= 0 (else a one-line UsageError naming ``flag``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UsageError(f"{flag} must be a finite number >= 0, got {value!r}")
    return float(value)


def parse_color(value: Any) -> tuple:
    """``"R,G,B"`` or three whole numbers, each in [0, 255]."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        rgb = tuple(int(str(part).strip()) for part in parts)
        ok = len(rgb) == 3 and all(0 <= c <= 255 for c in rgb) and not any(isinstance(p, (bool, float)) for p in parts)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"--guide-color must be three whole numbers 0-255 as R,G,B (e.g. 40,85,220), got {value!r}")
    return rgb


# ---------------------------------------------------------------------------------------------
# CLIP guidance
# ---------------------------------------------------------------------------------------------
def clip_pixels(image: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's input of images in [-1, 1], differentiably: the shorter side resized to ``size``
    (bicubic, antialiased when shrinking), the centre ``size`` x ``size`` crop, then CLIP's
    mean/std normalisation."""
    image = (image + 1) / 2
    height, width = image.shape[-2:]
    factor = size / min(height, width)
    resized = F.interpolate(image, size=(max(size, round(height * factor)), max(size, round(width * factor))),
                            mode="bicubic", align_corners=False, antialias=factor < 1)
    top, left = (resized.shape[-2] - size) // 2, (resized.shape[-1] - size) // 2
    crop = resized[..., top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=image.device).view(1, 3, 1, 1)
    return (crop - mean) / std


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Half the squared great-circle distance between the directions of ``a`` and ``b`` (last
    dimension), the loss of the CLIP-guided diffusion notebooks: 2 arcsin(|a - b| / 2)^2 of the
    unit vectors; 0 for equal directions, monotone in their angle."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return (a - b).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


class ClipGuide:
    """A transformers ``CLIPModel`` and the embedding of a prompt: ``loss(image)`` is the
    spherical distance, per image, between the CLIP embedding of images in [-1, 1] and the
    prompt's, with gradients to the images."""

    def __init__(self, clip: torch.nn.Module, tokenizer: Any, prompt: str):
        self.clip = clip.eval().requires_grad_(False)
        self.image_size = int(clip.config.vision_config.image_size)
        length = int(clip.config.text_config.max_position_embeddings)
        ids = tokenizer([prompt], padding="max_length", max_length=length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            self.text_embedding = clip.text_projection(clip.text_model(input_ids=ids).pooler_output)

    def to(self, device: torch.device) -> "ClipGuide":
        if self.text_embedding.device != device:
            self.clip.to(device)
            self.text_embedding = self.text_embedding.to(device)
        return self

    def image_embedding(self, image: torch.Tensor) -> torch.Tensor:
        pixels = clip_pixels(image.float(), self.image_size)
        return self.clip.visual_projection(self.clip.vision_model(pixel_values=pixels).pooler_output)

    def loss(self, image: torch.Tensor) -> torch.Tensor:
        self.to(image.device)
        return spherical_distance(self.image_embedding(image), self.text_embedding)


def clip_loss(guide: ClipGuide, scale: float) -> ImageLoss:
    """``scale`` times the spherical distance between the CLIP embeddings of the images and of
    the prompt (the CLIP-guided diffusion notebooks' loss), per image."""
    return lambda image: scale * guide.loss(image).sum()


def clip_guidance(model: torch.nn.Module, guide: ClipGuide, scale: float) -> CondFn:
    """CLIP guidance toward ``guide``'s prompt (``clip_loss``) of the decoded predicted x0; the
    gradient runs back through CLIP and the decoder (a pixel model's x0 is the image) to x."""
    return image_loss_guidance(model, clip_loss(guide, scale))


@functools.lru_cache(maxsize=2)
def load_clip(directory: str):
    """(``CLIPModel``, tokenizer) of a local transformers CLIP directory, nothing downloaded
    (:func:`~ldm.modules.encoders.clip_model.load_local_clip`); anything wrong is a one-line
    UsageError naming ``--guide-clip-model``."""
    from ldm.modules.encoders.clip_model import ClipDirectoryError, load_local_clip

    try:
        return load_local_clip(directory)
    except ClipDirectoryError as err:
        raise UsageError(f"--guide-clip-model {directory}: {err.reason}") from None


@dataclass(frozen=True)
class ClipGuidanceRequest:
    """``--guide-clip TEXT`` with the CLIP model of ``--guide-clip-model DIR`` at
    ``--guide-clip-scale``: checked (and CLIP loaded, once per directory: :func:`load_clip` keeps
    it) before the diffusion model is loaded, made into the CLIP loss, and recorded in the images'
    parameters."""
    prompt: str
    directory: str
    scale: float

    @classmethod
    def from_options(cls, opt: Any) -> Optional["ClipGuidanceRequest"]:
        prompt, directory = getattr(opt, "guide_clip", None), getattr(opt, "guide_clip_model", None)
        if prompt is None and directory is None:
            return None
        if prompt is None:
            raise UsageError("--guide-clip-model is only used with --guide-clip TEXT")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f"--guide-clip must be a non-empty text, got {prompt!r}")
        if directory is None:
            raise UsageError("--guide-clip needs --guide-clip-model DIR, a local transformers CLIP model "
                             "directory (nothing is downloaded)")
        request = cls(prompt, str(directory), checked_scale(opt.guide_clip_scale, "--guide-clip-scale"))
        load_clip(request.directory)  # a bad directory fails here, before the diffusion model loads
        return request

    in_latent_space = False

    def image_loss(self) -> ImageLoss:
        return clip_loss(ClipGuide(*load_clip(self.directory), self.prompt), self.scale)

    def parameters(self) -> Dict[str, object]:
        return {"Guidance CLIP": self.prompt, "Guidance CLIP scale": self.scale,
                "Guidance CLIP model": os.path.basename(os.path.normpath(self.directory))}


# ---------------------------------------------------------------------------------------------
# All the loss guidance of a run
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuidanceRequests:
    """The loss guidance asked for in ``opt`` (``--guide-color``, ``--guide-clip``, either or
    both): one ``cond_fn`` summing their gradients, capped per step by ``--guide-max-step``
    (``capped_guidance``; None: no cap), and their entries of the images' parameters."""
    requests: List[Any] = field(default_factory=list)
    max_step: Optional[float] = None

    @classmethod
    def from_options(cls, opt: Any) -> "GuidanceRequests":
        found = (ColorGuidanceRequest.from_options(opt), ClipGuidanceRequest.from_options(opt))
        max_step = getattr(opt, "guide_max_step", None)
        if max_step is not None:
            max_step = checked_scale(max_step, "--guide-max-step")
            if max_step == 0:
                raise UsageError("--guide-max-step must be > 0 (leave it out for no cap; --guide-scale 0 turns "
                                 "guidance off)")
        return cls([request for request in found if request is not None], max_step)

    @property
    def keeps_layout(self) -> bool:
        """Whether a request needs the images sampled first without guidance (``--guide-keep-layout``)."""
        return any(getattr(request, "keep_layout", False) for request in self.requests)

    def cond_fn(self, model: torch.nn.Module, reference: Optional[torch.Tensor] = None) -> Optional[CondFn]:
        """None without guidance; else the guidance by the sum of the requests' losses (the image
        losses all on one decode of the predicted x0, the latent ones on the latent itself), capped
        per step when ``max_step`` is set. ``reference``: the latents sampled without guidance, for
        ``keeps_layout``."""
        if not self.requests:
            return None
        image_losses = [request.image_loss() for request in self.requests if not request.in_latent_space]
        latent_losses = [request.latent_loss(model, reference) for request in self.requests
                         if request.in_latent_space]

        def total(denoised: torch.Tensor) -> torch.Tensor:
            loss = sum(latent_loss(denoised) for latent_loss in latent_losses)
            if image_losses:
                image = decoded_image(model, denoised)
                loss = loss + sum(image_loss(image) for image_loss in image_losses)
            return loss

        cond_fn = loss_guidance(total)
        return cond_fn if self.max_step is None else capped_guidance(model, cond_fn, self.max_step)

    def parameters(self) -> Dict[str, object]:
        found = {key: value for request in self.requests for key, value in request.parameters().items()}
        if found and self.max_step is not None:
            found["Guidance max step"] = self.max_step
        return found
