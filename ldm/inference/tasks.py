"""What each script does with the shared pipeline: text-to-image, image-to-image, inpainting,
depth-conditioned image-to-image and x4 upscaling. A task reads and checks its inputs before the
model is loaded (so bad input fails fast and writes nothing), then makes one batch of images at a
time."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ldm.inference.class_names import class_names_of, class_text, default_classes, parse_classes
from ldm.inference.errors import UsageError
from ldm.inference.host_memory import release_free_host_memory
from ldm.inference.images import load_depth, load_image, load_mask, pixels_for_output, read_source, source_size
from ldm.inference.loading import ModelSpec
from ldm.inference.pipeline import (
    Batch,
    SamplingSettings,
    decode_latents,
    encode_image,
    encode_prompts,
    guided_pair,
    prompt_sources,
    read_prompts,
    sample_from_image,
    sample_from_noise,
)
from ldm.inference.sampler_choice import chosen_sampler
from ldm.models.diffusion.seeding import ImageNoise

_SCRIPT_FOR_KIND = {"text": "scripts/txt2img.py or scripts/img2img.py", "inpaint": "scripts/inpaint.py",
                    "depth": "scripts/depth2img.py", "upscale": "scripts/upscale.py"}
_KIND_NAMES = {"text": "a text-to-image", "inpaint": "an inpainting", "depth": "a depth-to-image",
               "upscale": "an x4 upscaling", "unclip": "an unCLIP (image variation)"}
_SCRIPT_FOR_KIND.update({"unconditional": "scripts/sample_diffusion.py", "class": "scripts/sample_class.py"})
_KIND_NAMES.update({"unconditional": "an unconditional", "class": "a class-conditional"})


class Task:
    """Base of the tasks: model check, sampling settings and what goes into every image's
    parameters. Subclasses read their inputs in ``__init__`` and implement ``generate``."""
    name = ""
    title = ""  # how messages name the task, when not by ``name``
    accepted_kinds: Tuple[str, ...] = ("text",)
    needs_partial_denoising = False
    blends_known_region = False

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        self.opt = opt
        self.spec = spec
        self._check_model()

    def _check_model(self) -> None:
        self.check_model_kind(self.spec, self.opt.config)

    @classmethod
    def check_model_kind(cls, spec: ModelSpec, config: str) -> None:
        """Refuse a model of another task (an inpainting model in txt2img, ...), naming the script to use."""
        if spec.kind in cls.accepted_kinds:
            return
        wanted = " or ".join(_KIND_NAMES[kind] for kind in cls.accepted_kinds)
        use = _SCRIPT_FOR_KIND.get(spec.kind)
        advice = f"; use {use}" if use else ""
        raise UsageError(f"{cls.title or cls.name} needs {wanted} model, but --config {config} is "
                         f"{_KIND_NAMES[spec.kind]} model{advice}")

    @property
    def settings(self) -> SamplingSettings:
        return SamplingSettings(steps=self.opt.steps, eta=self.opt.ddim_eta, scale=self.opt.scale)

    def output_size(self) -> Tuple[int, int]:
        """(width, height) of the images made."""
        raise NotImplementedError

    def to_device(self, device: torch.device) -> None:
        """Move the inputs read in ``__init__`` to the model's device."""

    def generate(self, model: torch.nn.Module, sampler: Any, batch: Batch, noise: ImageNoise) -> torch.Tensor:
        """``[len(batch), 3, H, W]`` images in [0, 1]."""
        raise NotImplementedError

    def extra_parameters(self) -> Dict[str, object]:
        """Task-specific entries of the PNG parameters (after A1111's standard ones)."""
        return {}

    def requests(self) -> Tuple[List[str], List[int]]:
        """The prompts to make images of (one prompt fills every batch) and, for each, which
        per-prompt input it takes: ``--prompt`` or ``--from-file``, repeated as asked."""
        prompts = read_prompts(self.opt)
        return prompts, prompt_sources(self.opt, len(prompts))

    @property
    def batch_size(self) -> int:
        """Images per sampler call: ``--n_samples``, as the originals."""
        return self.opt.n_samples

    @staticmethod
    def _decode(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
        """Latents to images in [0, 1]. On CPU the heap memory the sampler freed is handed back to
        the OS first (:mod:`~ldm.inference.host_memory`), which lowers the decoder's peak."""
        if z.device.type == "cpu":
            release_free_host_memory()
        return decode_latents(model, z)

    def _text(self, model: torch.nn.Module, batch: Batch) -> Tuple[Any, Optional[Any]]:
        return encode_prompts(model, batch.prompts, self.opt.negative_prompt, self.opt.scale)

    def _latent_hw(self, image: torch.Tensor) -> Tuple[int, int]:
        return image.shape[-2] // self.spec.vae_factor, image.shape[-1] // self.spec.vae_factor

    def _inputs(self, value: Any, flag: str, what: str, read: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        """A required input (an image, mask or depth map) read with ``read``: one for every
        prompt, or, from the Python API, a list with one per prompt of a prompt list, stacked
        into ``[P, ...]``."""
        return _read_inputs(self.opt.prompt, _required(value, flag, what), flag, read)


def rows_for(inputs: Optional[torch.Tensor], batch: Batch) -> Optional[torch.Tensor]:
    """The inputs of a batch's images: the one input as it is (``[1, ...]``, broadcast by the
    caller), or the row of each image's prompt."""
    if inputs is None or inputs.shape[0] == 1:
        return inputs
    return inputs[torch.as_tensor(batch.sources, device=inputs.device)]


def _read_inputs(prompt: Any, value: Any, flag: str, read: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    if not isinstance(value, (list, tuple)):
        return read(value)
    prompts = prompt if isinstance(prompt, (list, tuple)) else [prompt]
    if len(value) != len(prompts):
        raise UsageError(f"{flag}: got {len(value)} inputs for {len(prompts)} prompt(s); give one, or one per prompt")
    tensors = [read(item) for item in value]
    if any(t.shape != tensors[0].shape for t in tensors):
        sizes = sorted({f"{t.shape[-1]}x{t.shape[-2]}" for t in tensors})
        raise UsageError(f"{flag}: the inputs of one call must have one size, got {', '.join(sizes)}")
    return torch.cat(tensors)


def check_strength(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise UsageError(f"--strength must be in [0, 1], got {strength}")


class TextToImage(Task):
    name = "txt2img"

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        super().__init__(opt, spec)
        self.height = self._side("H", opt.H)
        self.width = self._side("W", opt.W)
        self.channels = self._matching("C", opt.C, spec.channels, "latent channels")
        self.factor = self._matching("f", opt.f, spec.vae_factor, "autoencoder downsampling factor")

    def _side(self, flag: str, value: Optional[int]) -> int:
        value = self.spec.default_pixel_size if value is None else value
        if value < 8 or value % 8:
            raise UsageError(f"--{flag} must be a positive multiple of 8, got {value}")
        if value % self.spec.pixel_multiple:
            raise UsageError(f"--{flag} {value} is not a multiple of {self.spec.pixel_multiple}, which this "
                             f"model needs (autoencoder factor {self.spec.vae_factor} x UNet factor "
                             f"{self.spec.latent_multiple})")
        return value

    def _matching(self, flag: str, value: Optional[int], expected: int, what: str) -> int:
        if value is not None and value != expected:
            raise UsageError(f"--{flag} {value} does not match the config's {what} ({expected}); "
                             f"leave --{flag} out")
        return expected

    def output_size(self) -> Tuple[int, int]:
        return self.width, self.height

    def generate(self, model, sampler, batch, noise):
        c, uc = self._text(model, batch)
        shape = [self.channels, self.height // self.factor, self.width // self.factor]
        return self._decode(model, sample_from_noise(sampler, self.settings, shape, c, uc, noise))


class ImageToImage(Task):
    name = "img2img"
    needs_partial_denoising = True

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        super().__init__(opt, spec)
        check_strength(opt.strength)
        self.image = self._inputs(opt.init_img, "--init-img", "the image to start from",
                                  lambda source: load_image(source, spec.pixel_multiple))

    def output_size(self):
        return self.image.shape[-1], self.image.shape[-2]

    def to_device(self, device):
        self.image = self.image.to(device)

    def generate(self, model, sampler, batch, noise):
        c, uc = self._text(model, batch)
        init_latent = encode_image(model, rows_for(self.image, batch), noise)
        z = sample_from_image(sampler, self.settings, init_latent, self.opt.strength, c, uc, noise)
        return self._decode(model, z)

    def extra_parameters(self):
        return {"Denoising strength": self.opt.strength}


class Inpainting(Task):
    """With an inpainting model (9-channel UNet: latent, mask, masked-image latent) as the SAI
    demos; with a normal model by keeping the known region's latent during sampling (the
    sampler's ``mask``/``x0``) and pasting the known pixels back, as latent-diffusion's script."""
    name = "inpaint"
    accepted_kinds = ("inpaint", "text")

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        super().__init__(opt, spec)
        sizes = []  # each image's size as given, which its mask must have

        def read_image(source: Any) -> torch.Tensor:
            image = read_source(source, "--init-img")
            sizes.append(source_size(image))
            return load_image(image, spec.pixel_multiple)

        self.image = self._inputs(opt.init_img, "--init-img", "the image to inpaint", read_image)
        mask_sizes = iter(sizes)
        self.mask = self._inputs(opt.mask, "--mask", "a mask image, white where to repaint",
                                 lambda source: load_mask(source, next(mask_sizes), spec.pixel_multiple))
        if self.mask.shape[0] not in (1, self.image.shape[0]):
            raise UsageError("--mask: give one mask, or one per image")

    @property
    def uses_inpainting_model(self) -> bool:
        return self.spec.kind == "inpaint"

    @property
    def blends_known_region(self) -> bool:
        """A normal text-to-image model inpaints by the sampler's mask/x0 blending."""
        return not self.uses_inpainting_model

    def output_size(self):
        return self.image.shape[-1], self.image.shape[-2]

    def to_device(self, device):
        self.image, self.mask = self.image.to(device), self.mask.to(device)

    def generate(self, model, sampler, batch, noise):
        c, uc = self._text(model, batch)
        image, mask = rows_for(self.image, batch), rows_for(self.mask, batch)
        latent_hw = self._latent_hw(image)
        latent_mask = F.interpolate(mask, size=latent_hw).expand(len(batch), -1, -1, -1)
        shape = [self.spec.channels, *latent_hw]
        if self.uses_inpainting_model:
            masked_latent = encode_image(model, image * (mask < 0.5), noise)
            concat = _concat_in_model_order(model, latent_mask, masked_latent)
            cond, uncond = guided_pair(c, uc, c_concat=concat)
            z = sample_from_noise(sampler, self.settings, shape, cond, uncond, noise)
            return self._decode(model, z)
        init_latent = encode_image(model, image, noise)
        z = sample_from_noise(sampler, self.settings, shape, c, uc, noise,
                              mask=1.0 - latent_mask, x0=init_latent)
        return pixels_for_output(image) * (1.0 - mask) + self._decode(model, z) * mask

    def extra_parameters(self):
        return {"Inpainting": "model" if self.uses_inpainting_model else "latent mask blending"}


def _concat_in_model_order(model: torch.nn.Module, mask: torch.Tensor,
                           masked_latent: torch.Tensor) -> torch.Tensor:
    """Mask and masked-image latent concatenated in the order of the model's ``concat_keys``
    (``("mask", "masked_image")`` in the original)."""
    keys = getattr(model, "concat_keys", ("mask", "masked_image"))
    masked_key = getattr(model, "masked_image_key", "masked_image")
    return torch.cat([masked_latent if key == masked_key else mask for key in keys], dim=1)


class DepthToImage(ImageToImage):
    """img2img guided by a depth map concatenated to the UNet input (SD 2 depth model)."""
    name = "depth2img"
    accepted_kinds = ("depth",)

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        super().__init__(opt, spec)
        self.depth = None if opt.depth is None else self._inputs(opt.depth, "--depth", "a depth map", load_depth)

    def to_device(self, device):
        super().to_device(device)
        self.depth = self.depth.to(device) if self.depth is not None else None

    def _depth(self, model, image: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The given depth map, else the model's own estimate of the image's depth (MiDaS for SD 2
        depth, as the original demo)."""
        if self.depth is not None:
            return rows_for(self.depth, batch)
        return model.estimate_depth_of_images(image)

    def generate(self, model, sampler, batch, noise):
        c, uc = self._text(model, batch)
        image = rows_for(self.image, batch)
        init_latent = encode_image(model, image, noise)
        depth = model.depth_to_concat(self._depth(model, image, batch), self._latent_hw(image))
        depth = depth.expand(len(batch), -1, -1, -1)
        cond, uncond = guided_pair(c, uc, c_concat=depth.to(init_latent.dtype))
        z = sample_from_image(sampler, self.settings, init_latent, self.opt.strength, cond, uncond, noise)
        return self._decode(model, z)


class Upscaling(Task):
    """x4 super-resolution: the low-resolution image, noised to ``--noise_level``, is concatenated
    to the latent, whose size is that of the low-resolution image (output 4x)."""
    name = "upscale"
    accepted_kinds = ("upscale",)

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        super().__init__(opt, spec)
        top = spec.max_noise_level
        if not 0 <= opt.noise_level < top:
            raise UsageError(f"--noise_level must be in [0, {top - 1}] for this model, got {opt.noise_level}")
        self.low_res = self._inputs(opt.init_img, "--init-img", "the low-resolution image to upscale",
                                    lambda source: load_image(source, spec.latent_multiple))

    def output_size(self):
        return self.low_res.shape[-1] * self.spec.vae_factor, self.low_res.shape[-2] * self.spec.vae_factor

    def to_device(self, device):
        self.low_res = self.low_res.to(device)

    def generate(self, model, sampler, batch, noise):
        c, uc = self._text(model, batch)
        count = len(batch)
        level = torch.full((count,), self.opt.noise_level, device=self.low_res.device, dtype=torch.long)
        low_res = rows_for(self.low_res, batch).expand(count, -1, -1, -1)
        augmented = model.low_scale_model.q_sample(low_res, level, noise=noise.randn(low_res.shape[1:]))
        cond, uncond = guided_pair(c, uc, c_concat=augmented, c_adm=level)
        shape = [self.spec.channels, *low_res.shape[-2:]]
        return self._decode(model, sample_from_noise(sampler, self.settings, shape, cond, uncond, noise))

    def extra_parameters(self):
        return {"Noise level": self.opt.noise_level}


TASKS: Dict[str, type] = {task.name: task for task in (TextToImage, ImageToImage, Inpainting, DepthToImage, Upscaling)}


class _SamplingWithoutPrompt(Task):
    """What the tasks of models without a text prompt share: no prompt options, images of the
    model's own size, ``--batch_size`` images per sampler call, eta in the parameters."""
    instead_of_prompts = ""  # what to give instead, for the message refusing a prompt

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        super().__init__(opt, spec)
        kind = _KIND_NAMES[self.accepted_kinds[0]]
        for what, value in (("prompt", opt.prompt), ("negative prompt", opt.negative_prompt),
                            ("prompt file", opt.from_file)):
            if value:
                raise UsageError(f"{self.title}: {kind} model takes no {what} (got {value!r}){self.instead_of_prompts}")
        if opt.batch_size is not None and opt.batch_size < 1:
            raise UsageError(f"--batch_size must be at least 1, got {opt.batch_size}")

    def output_size(self) -> Tuple[int, int]:
        return self.spec.default_pixel_size, self.spec.default_pixel_size

    def extra_parameters(self) -> Dict[str, object]:
        return {"Eta": self.opt.ddim_eta} if self.opt.ddim_eta else {}

    def _requested_batch(self, images: int) -> int:
        """``--batch_size`` (default ``--n_samples``), at most the run's ``images``."""
        return min(self.opt.batch_size or self.opt.n_samples, images)

    def _sample(self, model: torch.nn.Module, sampler: Any, noise: ImageNoise, cond: Any = None,
                uncond: Any = None) -> torch.Tensor:
        shape = [self.spec.channels, self.spec.image_size, self.spec.image_size]
        return self._decode(model, sample_from_noise(sampler, self.settings, shape, cond, uncond, noise))


class UnconditionalSampling(_SamplingWithoutPrompt):
    """Samples of an unconditional model, a pixel-space DDPM or an unconditional latent model
    (``scripts/sample_diffusion.py``): ``--n_samples`` images in all. ``--vanilla_sample`` is the
    ddpm sampler on every timestep of the model; eta defaults to 1 with DDIM, as the original."""
    name = "unconditional"
    title = "unconditional sampling"
    accepted_kinds = ("unconditional",)
    DEFAULT_DDIM_ETA = 1.0

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        super().__init__(opt, spec)
        if opt.scale != 1.0:
            raise UsageError(f"--scale {opt.scale}: an unconditional model has no classifier-free guidance")
        if opt.vanilla_sample:
            if opt.sampler not in (None, "ddpm") or opt.plms or opt.dpm:
                raise UsageError("-v/--vanilla_sample is the ddpm sampler on every timestep; leave out --sampler, "
                                 "--plms and --dpm")
            opt.sampler, opt.steps = "ddpm", spec.timesteps
        if opt.ddim_eta is None:
            opt.ddim_eta = self.DEFAULT_DDIM_ETA if chosen_sampler(opt, False) == "ddim" else 0.0

    def requests(self) -> Tuple[List[str], List[int]]:
        return [""] * self.opt.n_samples, [0] * self.opt.n_samples

    @property
    def batch_size(self) -> int:
        return self._requested_batch(self.opt.n_samples)

    def generate(self, model, sampler, batch, noise):
        return self._sample(model, sampler, noise)


class ClassConditionalSampling(_SamplingWithoutPrompt):
    """Samples of a class-conditional model (a ``ClassEmbedder`` cond stage, ``scripts/sample_class.py``):
    ``--n_samples`` images of each of ``--classes`` (numbers, or names: :mod:`~ldm.inference.class_names`),
    guided against the model's "no class" label ``n_classes - 1``."""
    name = "class"
    title = "class sampling"
    accepted_kinds = ("class",)
    instead_of_prompts = "; give --classes (classes= from Python)"

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        super().__init__(opt, spec)
        self.names = class_names_of(opt.ckpt, opt.class_names, spec.n_classes)
        self.labels = (default_classes(spec.n_classes) if opt.classes is None
                       else parse_classes(opt.classes, self.names, spec.n_classes))
        self.device = torch.device("cpu")

    def requests(self) -> Tuple[List[str], List[int]]:
        count = self.opt.n_samples
        prompts = [class_text(label, self.names) for label in self.labels for _ in range(count)]
        return prompts, [index for index in range(len(self.labels)) for _ in range(count)]

    @property
    def batch_size(self) -> int:
        return self._requested_batch(len(self.labels) * self.opt.n_samples)

    def to_device(self, device):
        self.device = device

    def generate(self, model, sampler, batch, noise):
        embedder = model.cond_stage_model
        labels = torch.tensor([self.labels[source] for source in batch.sources], device=self.device)
        c = model.get_learned_conditioning({embedder.key: labels})
        uc = None
        if self.opt.scale != 1.0:
            uc = model.get_learned_conditioning(embedder.get_unconditional_conditioning(len(batch), device=self.device))
        return self._sample(model, sampler, noise, c, uc)


TASKS.update({task.name: task for task in (UnconditionalSampling, ClassConditionalSampling)})


def _required(value: Any, flag: str, what: str) -> Any:
    if value is None or (isinstance(value, (str, list, tuple)) and not value):
        raise UsageError(f"{flag} is required: {what}")
    return value
