"""What each script does with the shared pipeline: text-to-image, image-to-image, inpainting,
depth-conditioned image-to-image, x4 upscaling (SD x4 upscaler or LDM super-resolution) and unCLIP.
A task reads and checks its inputs before the model is loaded (so bad input fails fast and writes
nothing), then makes one batch of images at a time."""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F

from ldm.inference.class_names import class_names_of, class_text, default_classes, parse_classes
from ldm.inference.color_transfer import (
    DEFAULT_STRUCTURE_SCALE,
    object_coverage,
    structure_loss,
    transfer_color,
)
from ldm.inference.errors import UsageError
from ldm.inference.guidance import GuidanceRequests, checked_scale, image_loss_guidance
from ldm.inference.host_memory import release_free_host_memory
from ldm.inference.images import (
    DepthMapWriter,
    load_depth,
    load_image,
    load_mask,
    pixels_for_output,
    read_source,
    source_size,
)
from ldm.inference.loading import ModelSpec
from ldm.inference.pipeline import (
    Batch,
    SamplingSettings,
    decode_latents,
    encode_image,
    encode_prompts,
    guided_pair,
    hybrid_conditioning,
    prompt_sources,
    read_prompts,
    sample_from_image,
    sample_from_noise,
    step_progress,
)
from ldm.inference.sampler_choice import chosen_sampler
from ldm.models.diffusion.inversion import (
    blend_levels,
    check_diffedit,
    diffedit_mask,
    dilate_mask,
    edit_latent,
    plan_edit,
)
from ldm.models.diffusion.seeding import ImageNoise
from ldm.util import CheckpointError, first_line, in_cwd_or_repository

_SCRIPT_FOR_KIND = {"text": "scripts/txt2img.py or scripts/img2img.py", "inpaint": "scripts/inpaint.py",
                    "depth": "scripts/depth2img.py", "upscale": "scripts/upscale.py",
                    "superres": "scripts/upscale.py", "unclip": "scripts/unclip.py",
                    "unconditional": "scripts/sample_diffusion.py", "class": "scripts/sample_class.py"}
_KIND_NAMES = {"text": "a text-to-image", "inpaint": "an inpainting", "depth": "a depth-to-image",
               "upscale": "an x4 upscaling", "unclip": "an unCLIP (image variation)",
               "superres": "an LDM super-resolution", "unconditional": "an unconditional",
               "class": "a class-conditional"}


class Task:
    """Base of the tasks: model check, sampling settings and what goes into every image's
    parameters. Subclasses read their inputs in ``__init__`` and implement ``generate``."""
    name = ""
    title = ""  # how messages name the task, when not by ``name``
    accepted_kinds: Tuple[str, ...] = ("text",)
    needs_partial_denoising = False
    blends_known_region = False
    supports_keep_layout = False  # whether --guide-keep-layout's two passes are implemented

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        self.opt = opt
        self.spec = spec
        self._check_model()
        self.guidance = GuidanceRequests.from_options(opt)  # txt2img/img2img's --guide-color/--guide-clip
        if self.guidance.keeps_layout and not self.supports_keep_layout:
            raise UsageError(f"--guide-keep-layout works in txt2img only (it samples each image twice from its "
                             f"noise), not in {self.title or self.name}")

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

    def guided_settings(self, model: torch.nn.Module, reference: Optional[torch.Tensor] = None) -> SamplingSettings:
        """:attr:`settings` with the loss guidance asked for (``--guide-color``, ``--guide-clip``)
        on ``model``; ``reference``: the latents sampled without it (``--guide-keep-layout``)."""
        settings = self.settings
        settings.cond_fn = self.guidance.cond_fn(model, reference)
        return settings

    def guidance_parameters(self) -> Dict[str, object]:
        """The loss guidance's entries of the PNG parameters (none without it)."""
        return self.guidance.parameters()

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

    @property
    def side_outputs(self) -> List[Path]:
        """Files the task wrote besides the images (depth2img's ``--save-depth``)."""
        return []

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
    supports_keep_layout = True

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
        reference = None
        if self.guidance.keeps_layout:  # the same images without guidance, from fresh copies of the seeds
            reference = sample_from_noise(sampler, self.settings, shape, c, uc,
                                          ImageNoise(noise.seeds, noise.device, noise.dtype))
        settings = self.guided_settings(model, reference)
        return self._decode(model, sample_from_noise(sampler, settings, shape, c, uc, noise))


class _FromInitImage(Task):
    """What the tasks that start from ``--init-img`` share: the image (per prompt) read at the
    model's pixel multiple, its size as the output size."""
    needs_partial_denoising = True
    init_image_role = "the image to start from"

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        super().__init__(opt, spec)
        self._check_options()
        self.image = self._inputs(opt.init_img, "--init-img", self.init_image_role,
                                  lambda source: load_image(source, spec.pixel_multiple))

    def _check_options(self) -> None:
        """The task's own option checks, after the model kind's and before the image is read."""

    def output_size(self):
        return self.image.shape[-1], self.image.shape[-2]

    def to_device(self, device):
        self.image = self.image.to(device)


class ImageToImage(_FromInitImage):
    name = "img2img"

    def _check_options(self) -> None:
        check_strength(self.opt.strength)

    def generate(self, model, sampler, batch, noise):
        c, uc = self._text(model, batch)
        init_latent = encode_image(model, rows_for(self.image, batch), noise)
        z = sample_from_image(sampler, self.guided_settings(model), init_latent, self.opt.strength, c, uc, noise)
        return self._decode(model, z)

    def extra_parameters(self):
        return {"Denoising strength": self.opt.strength}


class Edit(_FromInitImage):
    """Editing by DDIM inversion (:mod:`~ldm.models.diffusion.inversion`): invert ``--init-img``
    with ``--source-prompt`` at guidance scale 1, then regenerate with ``--prompt`` at ``--scale``,
    reusing the inverted trajectory for the first ``--keep`` fraction of the ``--steps`` steps."""
    name = "edit"
    init_image_role = "the image to edit"

    def _check_options(self) -> None:
        opt = self.opt
        if not isinstance(opt.source_prompt, str) or not opt.source_prompt:
            raise UsageError("--source-prompt is required: the prompt that describes --init-img (one string)")
        if opt.inversion_steps < 1:
            raise UsageError(f"--inversion-steps must be at least 1, got {opt.inversion_steps}")
        try:
            self.plan = plan_edit(opt.keep, opt.steps, opt.inversion_steps, self.spec.timesteps)
            if opt.mask_mode == "diffedit":
                check_diffedit(opt.mask_threshold, opt.mask_strength, opt.mask_noises)
                blend_levels(self.plan, self.spec.timesteps)
                if opt.mask_dilate < 0:
                    raise ValueError(f"--mask-dilate must be 0 or more, got {opt.mask_dilate}")
            if opt.color_transfer:
                self.full_plan = plan_edit(0.0, opt.steps, opt.inversion_steps, self.spec.timesteps)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if opt.structure_scale is not None:
            checked_scale(opt.structure_scale, "--structure-scale")
        if opt.color_transfer and opt.mask_mode == "diffedit":
            raise UsageError("--color-transfer and --mask-mode diffedit cannot be combined; give one of them")

    @property
    def structure_scale(self) -> float:
        """``--structure-scale``; unset, 10000 with ``--color-transfer`` and 0 (off) without."""
        if self.opt.structure_scale is not None:
            return self.opt.structure_scale
        return DEFAULT_STRUCTURE_SCALE if self.opt.color_transfer else 0.0

    def generate(self, model, sampler, batch, noise):
        c, uc = self._text(model, batch)
        source = model.get_learned_conditioning([self.opt.source_prompt] * len(batch))
        inverted_with = (source if self.opt.inversion_prompt == "source"
                         else model.get_learned_conditioning([""] * len(batch)))
        init_latent = encode_image(model, rows_for(self.image, batch), noise)
        mask = self._mask(sampler, init_latent, source, c, noise)
        fill = (noise.randn(init_latent.shape[1:]).to(init_latent)
                if mask is not None and self.opt.mask_fill == "noise" else None)
        image = rows_for(self.image, batch)
        cond_fn = (image_loss_guidance(model, structure_loss(image, self.structure_scale))
                   if self.structure_scale else None)
        steps = self.plan.inversion_count + self.plan.regeneration_steps
        if self.opt.color_transfer:
            steps += self.full_plan.inversion_count + self.full_plan.regeneration_steps + self.plan.inversion_count
        with step_progress(steps, "editing") as on_step:
            if self.opt.color_transfer:
                init_latent = self._transfer_color(model, sampler, image, init_latent, inverted_with, c, uc,
                                                   noise, on_step)
                inverted_with = c
            z = edit_latent(sampler, init_latent, inverted_with, c, self.plan, uc, self.opt.scale,
                            self.opt.ddim_eta, noise.generators, mask=mask, fill_noise=fill, callback=on_step,
                            cond_fn=cond_fn)
        return self._decode(model, z)

    def _transfer_color(self, model, sampler, image, init_latent, inverted_with, c, uc, noise, on_step):
        """The image latent with its object recoloured as ``--prompt`` draws it when regenerated from the
        inverted noise (:mod:`~ldm.inference.color_transfer`); the edit then inverts this latent
        with ``--prompt`` and regenerates it at ``--keep``."""
        drawn = edit_latent(sampler, init_latent, inverted_with, c, self.full_plan, uc, self.opt.scale,
                            self.opt.ddim_eta, noise.generators, callback=on_step)
        size = init_latent.shape[-2:]
        drawn_image = model.decode_first_stage(drawn)
        return transfer_color(init_latent, drawn, object_coverage(image, size).to(init_latent),
                              object_coverage(drawn_image, size).to(init_latent))

    def _mask(self, sampler, init_latent, source, c, noise) -> Optional[torch.Tensor]:
        """DiffEdit's mask with ``--mask-mode diffedit``, None (edit everywhere) otherwise."""
        opt = self.opt
        if opt.mask_mode != "diffedit":
            return None
        mask = diffedit_mask(sampler, init_latent, source, c, opt.mask_threshold, opt.mask_strength,
                             opt.mask_noises, noise.generators)
        return dilate_mask(mask, opt.mask_dilate)

    def extra_parameters(self):
        parameters = {"Source prompt": self.opt.source_prompt, "Inversion steps": self.opt.inversion_steps,
                      "Keep": self.opt.keep}
        if self.opt.inversion_prompt != "source":
            parameters["Inversion prompt"] = self.opt.inversion_prompt
        if self.opt.color_transfer:
            parameters["Color transfer"] = True
        if self.structure_scale:
            parameters["Structure scale"] = self.structure_scale
        if self.opt.mask_mode == "diffedit":
            parameters.update({"Mask mode": "diffedit", "Mask threshold": self.opt.mask_threshold,
                               "Mask strength": self.opt.mask_strength, "Mask noises": self.opt.mask_noises,
                               "Mask dilate": self.opt.mask_dilate, "Mask fill": self.opt.mask_fill})
        return parameters


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
        maps = (self.depth if self.depth is not None else self.image).shape[0]
        self.depth_writer = None if opt.save_depth is None else DepthMapWriter(opt.save_depth, maps)
        self._saved_maps: Set[int] = set()

    def to_device(self, device):
        super().to_device(device)
        self.depth = self.depth.to(device) if self.depth is not None else None

    def _depth(self, model, image: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The given depth map, else the model's own estimate of the image's depth (MiDaS for SD 2
        depth, as the original demo)."""
        if self.depth is not None:
            return rows_for(self.depth, batch)
        return model.estimate_depth_of_images(image)

    def _save_depth(self, depth: torch.Tensor, batch: Batch) -> None:
        """``--save-depth``: each depth map once, the first time a batch uses it (a map of several
        rows holds the map of each image's prompt)."""
        if self.depth_writer is None:
            return
        sources = batch.sources if depth.shape[0] > 1 else [0]
        for row, source in enumerate(sources):
            if source not in self._saved_maps:
                self.depth_writer.save(depth[row, 0])
                self._saved_maps.add(source)

    @property
    def side_outputs(self) -> List[Path]:
        return list(self.depth_writer.written) if self.depth_writer is not None else []

    def generate(self, model, sampler, batch, noise):
        c, uc = self._text(model, batch)
        image = rows_for(self.image, batch)
        init_latent = encode_image(model, image, noise)
        depth_map = self._depth(model, image, batch)
        self._save_depth(depth_map, batch)
        depth = model.depth_to_concat(depth_map, self._latent_hw(image))
        depth = depth.expand(len(batch), -1, -1, -1)
        cond, uncond = guided_pair(c, uc, c_concat=depth.to(init_latent.dtype))
        z = sample_from_image(sampler, self.settings, init_latent, self.opt.strength, cond, uncond, noise)
        return self._decode(model, z)


class Upscaling(Task):
    """x4 super-resolution: the low-resolution image is concatenated to the latent, whose size is
    that of the low-resolution image (output: the autoencoder's factor larger, 4x). With the SD x4
    upscaler the image is first noised to ``--noise_level`` and the prompt guides; the
    latent-diffusion BSR model (``kind`` superres) takes the clean image in [-1, 1] and no text, as
    its notebook (``get_cond`` / ``make_convolutional_sample``), in the notebook's patches when it
    is large (``NOTEBOOK_SPLIT_INPUT_PARAMS``)."""
    name = "upscale"
    accepted_kinds = ("upscale", "superres")

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        super().__init__(opt, spec)
        if self.is_ldm_superres:
            _refuse_text_and_noise_level(opt)
        else:
            top = spec.max_noise_level
            if not 0 <= opt.noise_level < top:
                raise UsageError(f"--noise_level must be in [0, {top - 1}] for this model, got {opt.noise_level}")
        self.low_res = self._inputs(opt.init_img, "--init-img", "the low-resolution image to upscale",
                                    self._read_low_res)

    def _read_low_res(self, source: Any) -> torch.Tensor:
        """The image in [-1, 1], resized down to multiples of the UNet's factor (8), or of the
        patch stride (64) when the LDM BSR model will sample it in patches."""
        if not self.is_ldm_superres:
            return load_image(source, self.spec.latent_multiple)
        image = read_source(source, "--init-img")
        width, height = source_size(image)
        in_patches = min(width, height) >= PATCH_SIZE
        return load_image(image, PATCH_STRIDE if in_patches else self.spec.latent_multiple)

    @property
    def is_ldm_superres(self) -> bool:
        return self.spec.kind == "superres"

    def output_size(self):
        return self.low_res.shape[-1] * self.spec.vae_factor, self.low_res.shape[-2] * self.spec.vae_factor

    def to_device(self, device):
        self.low_res = self.low_res.to(device)

    def generate(self, model, sampler, batch, noise):
        count = len(batch)
        low_res = rows_for(self.low_res, batch).expand(count, -1, -1, -1)
        shape = [self.spec.channels, *low_res.shape[-2:]]
        if self.is_ldm_superres:
            cond = model.get_learned_conditioning(low_res)  # torch.nn.Identity: the image itself
            with _patchwise_when_large(model, low_res.shape[-2:], self.spec.vae_factor):
                return self._decode(model, sample_from_noise(sampler, self.settings, shape, cond, None, noise))
        c, uc = self._text(model, batch)
        level = torch.full((count,), self.opt.noise_level, device=self.low_res.device, dtype=torch.long)
        augmented = model.low_scale_model.q_sample(low_res, level, noise=noise.randn(low_res.shape[1:]))
        cond, uncond = guided_pair(c, uc, c_concat=augmented, c_adm=level)
        return self._decode(model, sample_from_noise(sampler, self.settings, shape, cond, uncond, noise))

    def extra_parameters(self):
        return {} if self.is_ldm_superres else {"Noise level": self.opt.noise_level}


# The original notebook's patch-wise sampling of large inputs (notebook_helpers.run): UNet and
# decoder on overlapping 128x128-latent patches every 64 latent pixels, blended by distance to the
# patch border. Used when both sides of the low-resolution image (= the latent) hold a patch.
PATCH_SIZE, PATCH_STRIDE = 128, 64
NOTEBOOK_SPLIT_INPUT_PARAMS = {"ks": (PATCH_SIZE, PATCH_SIZE), "stride": (PATCH_STRIDE, PATCH_STRIDE),
                               "patch_distributed_vq": True, "tie_braker": False, "clip_max_weight": 0.5,
                               "clip_min_weight": 0.01, "clip_max_tie_weight": 0.5, "clip_min_tie_weight": 0.01}


@contextlib.contextmanager
def _patchwise_when_large(model: torch.nn.Module, latent_hw: Sequence[int], vae_factor: int) -> Iterator[None]:
    """Set the model's ``split_input_params`` to the notebook's while sampling a latent of at
    least one patch each way; the model is left without them afterwards, as the notebook leaves
    it for small inputs."""
    if min(latent_hw) >= PATCH_SIZE:
        model.split_input_params = dict(NOTEBOOK_SPLIT_INPUT_PARAMS, vqf=vae_factor)
    elif hasattr(model, "split_input_params"):
        del model.split_input_params
    try:
        yield
    finally:
        if hasattr(model, "split_input_params"):
            del model.split_input_params


def _refuse_text_and_noise_level(opt: argparse.Namespace) -> None:
    """The LDM super-resolution model sees only the clean low-resolution image: a prompt, a
    negative prompt, guidance or a noise level cannot change its output, so they are refused."""
    what = "the LDM super-resolution model is conditioned on the low-resolution image only"
    if opt.noise_level is not None:
        raise UsageError(f"--noise_level: {what} (no noise augmentation); leave --noise_level out")
    prompts = opt.prompt if isinstance(opt.prompt, (list, tuple)) else [opt.prompt]
    if opt.from_file is not None or any(prompts):
        raise UsageError(f"--prompt: {what} (no text); leave --prompt and --from-file out")
    if opt.negative_prompt:
        raise UsageError(f"--negative_prompt: {what} (no text); leave --negative_prompt out")
    if opt.scale != 1.0:
        raise UsageError(f"--scale: {what}, so there is no classifier-free guidance; leave --scale out")


PRIOR_FLAGS = {"prior_config": "--prior-config", "prior_ckpt": "--prior-ckpt", "prior_clip": "--prior-clip",
               "prior_clip_stats": "--prior-clip-stats"}


@functools.lru_cache(maxsize=1)
def _karlo_prior(config: str, ckpt: str, clip: str, clip_stats: str, device: str) -> Any:
    """The Karlo prior of these files on ``device``, loaded once for consecutive calls."""
    from ldm.modules.karlo import load_prior

    return load_prior(config, ckpt, clip, clip_stats, device=device)


def _embedding_width(model: torch.nn.Module) -> int:
    """The width of the image embedding an unCLIP model takes: its UNet's ``y`` width
    (``adm_in_channels``, the input of ``label_emb``) less that of the noise-level embedding."""
    width = model.model.diffusion_model.label_emb[0][0].in_features
    augmentor = model.noise_augmentor
    return width - augmentor.time_embed.dim if augmentor is not None else width


def _prior_seeds(noise: ImageNoise) -> List[int]:
    """A seed for each image's prior sample, drawn from the image's own generator: the prior's noise
    then follows the image's seed, yet is not the image's own stream (seeded alike, the prior's start
    noise would equal the image's augmentation noise)."""
    return [int(torch.randint(0, 2 ** 63 - 1, (1,), generator=generator)) for generator in noise.generators]


class UnCLIP(TextToImage):
    """SD 2.1 unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP
    Latents", with a latent decoder): the UNet's ``c_adm`` is a CLIP image embedding, noised to
    ``--noise_level`` by the model's ``noise_augmentor`` and followed by the embedding of that
    level, beside an optional prompt. The embedding is that of ``--init-img`` by the model's CLIP
    image embedder (image variations), or the Karlo prior's sample for the prompt (``--prior-*``,
    text to image). The unconditional side of guidance is the negative prompt with an all-zero
    ``c_adm``, as in the Stability demo (``scripts/streamlit/stableunclip.py``). Each image's draws
    from its generator, in order: the seed of its prior sample (with the prior), the noise of the
    augmentation, then the sampler's start noise."""
    name = "unclip"
    accepted_kinds = ("unclip",)
    supports_keep_layout = False

    def __init__(self, opt: argparse.Namespace, spec: ModelSpec):
        super().__init__(opt, spec)
        self._check_noise_level()
        self.prior_files = self._prior_files()
        self.prior = None
        if self.prior_files is None:
            self.image = self._inputs(opt.init_img, "--init-img", "the image to make variations of (or the "
                                      "--prior-* flags, to start from the prompt through the Karlo prior)",
                                      lambda source: load_image(source, spec.pixel_multiple))

    def _check_noise_level(self) -> None:
        top, level = self.spec.max_noise_level, self.opt.noise_level
        if top is None and level != 0:
            raise UsageError(f"--noise_level {level}: this model has no noise augmentation (no noise_aug_config); "
                             "leave --noise_level out")
        if top is not None and not 0 <= level < top:
            raise UsageError(f"--noise_level must be in [0, {top - 1}] for this model, got {level}")

    def _prior_files(self) -> Optional[Tuple[str, ...]]:
        """The prior's four files when the --prior-* flags are given (all or none; then with a prompt,
        without --init-img), else None."""
        opt = self.opt
        given = {name: getattr(opt, name) for name in PRIOR_FLAGS if getattr(opt, name) is not None}
        if not given:
            return None
        if opt.init_img is not None:
            raise UsageError("--init-img and the --prior-* flags both given: give --init-img for variations of an "
                             "image, or the --prior-* flags for images of the prompt")
        if opt.from_file is None and not opt.prompt:
            raise UsageError("--prompt is required with the Karlo prior (the prior makes the image embedding "
                             "from it)")
        if opt.prior_steps < 1:
            raise UsageError(f"--prior-steps must be at least 1, got {opt.prior_steps}")
        if not (math.isfinite(opt.prior_scale) and opt.prior_scale > 0):
            raise UsageError(f"--prior-scale must be a number > 0, got {opt.prior_scale}")
        missing = [flag for name, flag in PRIOR_FLAGS.items() if name not in given]
        if missing:
            raise UsageError(f"the Karlo prior needs {', '.join(missing)} too (all four --prior-* files)")
        paths = tuple(in_cwd_or_repository(given[name]) for name in PRIOR_FLAGS)
        for path, (name, flag) in zip(paths, PRIOR_FLAGS.items()):
            found = Path(path).exists() if name == "prior_clip" else Path(path).is_file()  # CLIP: file or folder
            if not found:
                raise UsageError(f"{flag}: file not found: {given[name]}")
        return paths

    def to_device(self, device):
        if self.prior_files is None:
            self.image = self.image.to(device)
            return
        try:
            self.prior = _karlo_prior(*self.prior_files, device=str(device))
        except (CheckpointError, ValueError, KeyError) as err:
            raise UsageError(f"the Karlo prior cannot be loaded: {first_line(err)}") from None
        if self.opt.prior_steps > self.prior.num_timesteps:
            raise UsageError(f"--prior-steps must be at most {self.prior.num_timesteps} (the prior's diffusion steps), "
                             f"got {self.opt.prior_steps}")

    def _image_embedding(self, model: torch.nn.Module, batch: Batch, noise: ImageNoise) -> torch.Tensor:
        """``[B, D]`` CLIP image embeddings: of the init image, or sampled by the prior for each prompt."""
        if self.prior is None:
            embedding = model.embedder(rows_for(self.image, batch))
            return embedding.expand(len(batch), -1)
        embedding = self.prior.sample(list(batch.prompts), steps=self.opt.prior_steps,
                                      guidance_scale=self.opt.prior_scale, seeds=_prior_seeds(noise))
        expected = _embedding_width(model)
        if embedding.shape[-1] != expected:
            raise UsageError(f"the Karlo prior makes {embedding.shape[-1]}-d image embeddings but --config "
                             f"{self.opt.config} takes {expected}-d ones; the prior fits unCLIP-L "
                             "(configs/stable-diffusion/v2-1-stable-unclip-l-inference.yaml)")
        return embedding.to(model.device)

    def _noise_augmented(self, model: torch.nn.Module, embedding: torch.Tensor, noise: ImageNoise) -> torch.Tensor:
        """``c_adm``: the embedding noised to ``--noise_level`` and the level's embedding, concatenated."""
        augmentor = model.noise_augmentor
        if augmentor is None:
            return embedding
        if augmentor.missing_stats_path is not None:
            raise UsageError(f"the model's noise augmentation needs the CLIP embedding statistics at "
                             f"{augmentor.missing_stats_path} (for unCLIP-L: ViT-L-14_stats.th of Kakao Brain's Karlo "
                             "v1.0.alpha release; see docs/KARLO.md)")
        level = torch.full((len(embedding),), self.opt.noise_level, device=embedding.device, dtype=torch.long)
        eps = noise.randn(embedding.shape[1:]).to(embedding.device)
        noised, level_embedding = augmentor(embedding.float(), noise_level=level, noise=eps)
        return torch.cat((noised, level_embedding), 1)

    def generate(self, model, sampler, batch, noise):
        c, uc = self._text(model, batch)
        c_adm = self._noise_augmented(model, self._image_embedding(model, batch, noise), noise)
        cond = hybrid_conditioning(c, c_adm=c_adm)
        uncond = None if uc is None else hybrid_conditioning(uc, c_adm=torch.zeros_like(c_adm))
        shape = [self.channels, self.height // self.factor, self.width // self.factor]
        return self._decode(model, sample_from_noise(sampler, self.settings, shape, cond, uncond, noise))

    def extra_parameters(self):
        extra: Dict[str, object] = {}
        if self.spec.max_noise_level is not None:
            extra["Noise level"] = self.opt.noise_level
        if self.prior_files is None:
            return {**extra, "unCLIP": "image variation"}
        return {**extra, "unCLIP": "Karlo prior", "Prior": Path(self.prior_files[1]).stem,
                "Prior steps": self.opt.prior_steps, "Prior CFG scale": self.opt.prior_scale}


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


TASKS: Dict[str, type] = {task.name: task for task in (TextToImage, ImageToImage, Edit, Inpainting, DepthToImage,
                                                      Upscaling, UnCLIP, UnconditionalSampling,
                                                      ClassConditionalSampling)}


def _required(value: Any, flag: str, what: str) -> Any:
    if value is None or (isinstance(value, (str, list, tuple)) and not value):
        raise UsageError(f"{flag} is required: {what}")
    return value
