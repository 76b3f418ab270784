"""Helpers every sampler shares: the sampler contract (``Sampler``, the one ``sample(...)``
signature, and ``SamplerCapabilities``, what each sampler honours), the one
classifier-free-guidance wrapper with its loss-guidance hook (``LossGuidance``), x0
thresholding, seeded noise draws (one generator per image, so results do not depend on the
batch size), the conditioning batch-size check and the check that stops a run whose latents
stopped being finite."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

import torch

Generator = Union[torch.Generator, Sequence[torch.Generator], None]


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append singleton dimensions to ``x`` until it has ``target_dims`` dimensions."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def norm_thresholding(x0: torch.Tensor, value: float) -> torch.Tensor:
    """Scale each sample so that its root-mean-square is at most ``value``."""
    rms = x0.pow(2).flatten(1).mean(1).sqrt().clamp(min=value)
    return x0 * (value / append_dims(rms, x0.ndim))


def spatial_norm_thresholding(x0: torch.Tensor, value: float) -> torch.Tensor:
    """Scale each pixel (over channels, input b c h w) so its RMS is at most ``value``."""
    rms = x0.pow(2).mean(1, keepdim=True).sqrt().clamp(min=value)
    return x0 * (value / rms)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------
def _cat_pair(uncond: Any, cond: Any, where: str) -> Any:
    if uncond is None and cond is None:
        return None
    if not (isinstance(uncond, torch.Tensor) and isinstance(cond, torch.Tensor)):
        raise ValueError(f"conditioning {where}: expected tensors for both the unconditional and "
                         f"conditional input, got {type(uncond).__name__} and {type(cond).__name__}")
    return torch.cat([uncond, cond])


def _cat_list(uncond: Any, cond: list, where: str) -> list:
    if not isinstance(uncond, (list, tuple)) or len(uncond) != len(cond):
        raise ValueError(f"conditioning {where}: the unconditional conditioning must be a list of "
                         f"{len(cond)} tensors like the conditional one")
    return [_cat_pair(u, c, f"{where}[{i}]") for i, (u, c) in enumerate(zip(uncond, cond))]


def concat_conditionings(uncond: Any, cond: Any) -> Any:
    """Batch ``[uncond, cond]`` (unconditional first, as the originals order it) for tensors,
    lists of tensors and dicts whose values are tensors or lists of tensors (``c_concat``,
    ``c_crossattn``, ``c_adm``)."""
    if isinstance(cond, dict):
        if not isinstance(uncond, dict) or set(uncond) != set(cond):
            raise ValueError(f"unconditional conditioning must be a dict with keys {sorted(cond)}")
        return {k: _cat_list(uncond[k], v, k) if isinstance(v, (list, tuple))
                else _cat_pair(uncond[k], v, k) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return _cat_list(uncond, cond, "list")
    return _cat_pair(uncond, cond, "tensor")


def guided_model_output(apply_model: Callable, x: torch.Tensor, t: torch.Tensor, cond: Any,
                        unconditional_conditioning: Any = None, guidance_scale: float = 1.0,
                        guidance: Optional["LossGuidance"] = None) -> torch.Tensor:
    """Model output with classifier-free guidance (Ho & Salimans 2022, eq. 6):
    ``u + s * (c - u)`` from one doubled batch ``[uncond, cond]``, then, with ``guidance``, the
    loss-guidance correction of that guided output (``LossGuidance``). With ``s == 1`` or no
    unconditional conditioning the model runs once on ``cond`` alone."""
    if unconditional_conditioning is None or guidance_scale == 1.:
        out = apply_model(x, t, cond)
    else:
        c_in = concat_conditionings(unconditional_conditioning, cond)
        out_uncond, out_cond = apply_model(torch.cat([x] * 2), torch.cat([t] * 2), c_in).chunk(2)
        out = out_uncond + guidance_scale * (out_cond - out_uncond)
    return out if guidance is None else guidance(x, t, out)


# ---------------------------------------------------------------------------------------------
# Loss guidance
# ---------------------------------------------------------------------------------------------
CondFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``cond_fn(x, t, denoised) -> gradient``: x the VP latent (a leaf that requires grad), t the
network's timestep (B,), denoised the predicted x0 as a differentiable function of x; returns
grad_x log p(y | x), the gradient of a log-probability-like objective (minus a scaled loss)."""


def eps_from_output(parameterization: str, x: torch.Tensor, output: torch.Tensor,
                    a_t: torch.Tensor) -> torch.Tensor:
    """The noise prediction of a network output at VP latent x (eps; x0: Ho et al. 2020, eq. 4
    solved for eps; v: eps = sqrt(a) v + sqrt(1 - a) x, Salimans & Ho 2022)."""
    if parameterization == "eps":
        return output
    if parameterization == "x0":
        return (x - a_t.sqrt() * output) / (1 - a_t).sqrt()
    if parameterization == "v":
        return a_t.sqrt() * output + (1 - a_t).sqrt() * x
    raise ValueError(f"unknown parameterization '{parameterization}'")


def shift_output(parameterization: str, output: torch.Tensor, grad: torch.Tensor,
                 a_t: torch.Tensor) -> torch.Tensor:
    """The network output whose noise prediction is eps - sqrt(1 - a) grad at the same x (the
    score moved by grad): eps' = eps - sqrt(1 - a) g, x0' = x0 + (1 - a) / sqrt(a) g,
    v' = v - sqrt((1 - a) / a) g."""
    if parameterization == "eps":
        return output - (1 - a_t).sqrt() * grad
    if parameterization == "x0":
        return output + (1 - a_t) / a_t.sqrt() * grad
    if parameterization == "v":
        return output - ((1 - a_t) / a_t).sqrt() * grad
    raise ValueError(f"unknown parameterization '{parameterization}'")


def discrete_alpha_cumprod(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a_t of a discrete schedule at integer timesteps, or between them with log(sigma) linear
    in t (the interpolation of the sigma-space samplers, ``sigma_schedule``)."""
    if not torch.is_floating_point(t):
        return alphas_cumprod.to(t.device)[t]
    log_sigmas = 0.5 * ((1 - alphas_cumprod) / alphas_cumprod).log().to(t.device)
    t = t.to(log_sigmas.dtype).clamp(0, len(log_sigmas) - 1)
    lower = t.floor().long().clamp(max=len(log_sigmas) - 2)
    weight = t - lower
    sigma = ((1 - weight) * log_sigmas[lower] + weight * log_sigmas[lower + 1]).exp()
    return 1 / (1 + sigma ** 2)


@dataclass(frozen=True)
class LossGuidance:
    """Guidance by the gradient of a loss (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs",
    Alg. 2 and eq. 14; guided-diffusion's ``condition_score``), applied to the
    classifier-free-guided output of any parameterization, so every sampler gets it through
    ``guided_model_output``.

    With a_t the cumulative alpha at t and g = ``cond_fn(x, t, denoised)``, the score
    grad log p(x_t) = -eps / sqrt(1 - a_t) moves by g: eps' = eps - sqrt(1 - a_t) g, i.e.
    denoised' = denoised + (1 - a_t) / sqrt(a_t) g, or in the sigma view x = x_t / sqrt(a_t)
    (gradient g_sigma = sqrt(a_t) g) denoised' = denoised + sigma^2 g_sigma, the colour-loss
    tutorial's update; the output is shifted to match (``shift_output``). ``denoised`` holds the
    network's noise prediction fixed, so d denoised / dx = 1 / sqrt(a_t) (no backpropagation
    through the network), the same for eps, x0 and v models. A zero gradient returns the
    output bit for bit. ``alpha_cumprod_at(t)`` gives a_t at the timesteps the sampler uses."""

    cond_fn: CondFn
    parameterization: str
    alpha_cumprod_at: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def for_model(cls, cond_fn: Optional[CondFn], model) -> Optional["LossGuidance"]:
        """The guidance of ``cond_fn`` for ``model``'s parameterization and discrete schedule
        (integer or fractional timesteps); None without a ``cond_fn``."""
        if cond_fn is None:
            return None
        alphas_cumprod = model.alphas_cumprod.detach()
        return cls(cond_fn, model.parameterization,
                   lambda t: discrete_alpha_cumprod(alphas_cumprod, t))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        a_t = append_dims(self.alpha_cumprod_at(t).to(x.device, torch.promote_types(
            x.dtype, torch.float32)), x.ndim)
        eps = eps_from_output(self.parameterization, x, output, a_t).detach()
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            denoised = (x_in - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            grad = self.cond_fn(x_in, t, denoised)
        if grad.shape != x.shape:
            raise ValueError(f"cond_fn returned a gradient of shape {tuple(grad.shape)} for "
                             f"latents of shape {tuple(x.shape)}")
        return shift_output(self.parameterization, output, grad.detach(), a_t).to(output.dtype)


def warn_on_batch_mismatch(conditioning: Any, batch_size: int) -> None:
    """Print the original's warning when the conditioning batch differs from ``batch_size``."""
    if conditioning is None:
        return
    if isinstance(conditioning, dict):
        first = conditioning[list(conditioning.keys())[0]]
        while isinstance(first, (list, tuple)):
            first = first[0]
        tensors = [first]
    elif isinstance(conditioning, (list, tuple)):
        tensors = list(conditioning)
    else:
        tensors = [conditioning]
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.shape[0] != batch_size:
            print(f"Warning: Got {tensor.shape[0]} conditionings but batch-size is {batch_size}")


# ---------------------------------------------------------------------------------------------
# Non-finite values
# ---------------------------------------------------------------------------------------------
class NonFiniteSampleError(ValueError):
    """Sampling produced NaN or infinite values; the run stops instead of decoding black images."""


def check_finite(x: torch.Tensor, step: int, total: int, sampler: str) -> None:
    """Raise ``NonFiniteSampleError`` when ``x`` (the latents or model output after step
    ``step``, counted from 1, of ``total``) holds a NaN or an infinity. One reduction per step
    (AUTOMATIC1111's NaN check does the same)."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteSampleError(
            f"{sampler} sampling produced NaN/inf values at step {step} of {total}; usual causes: "
            f"float16 overflow (try --precision full, or ATTN_PRECISION=fp32 for attention) or "
            f"NaN weights in the checkpoint")


# ---------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------
def randn(shape: Sequence[int], generator: Generator = None, device=None,
          dtype: Optional[torch.dtype] = None, repeat: bool = False) -> torch.Tensor:
    """Standard normal noise of ``shape``.

    ``generator`` may be None (global RNG, the same draws as the original's ``torch.randn``),
    one ``torch.Generator``, or a list with one generator per batch element, so that image k
    gets the same noise whatever batch it is sampled in. Draws happen on the generator's device.
    ``repeat``: one draw (from the first generator of a list) shared by the whole batch, the
    original's ``repeat_noise``.
    """
    dtype = dtype or torch.float32
    if repeat:
        first = generator[0] if isinstance(generator, (list, tuple)) else generator
        return randn((1, *shape[1:]), first, device, dtype).repeat(shape[0], *((1,) * (len(shape) - 1)))
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=generator.device,
                           dtype=dtype).to(device)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}; "
                         "pass one generator per batch element")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype)
                        .to(device) for g in generators])


# ---------------------------------------------------------------------------------------------
# The sampler contract
# ---------------------------------------------------------------------------------------------
OPTION_DEFAULTS: Dict[str, Any] = {
    "eta": 0., "mask": None, "x0": None, "callback": None, "img_callback": None,
    "score_corrector": None, "corrector_kwargs": None, "generator": None, "quantize_x0": False,
    "temperature": 1., "noise_dropout": 0., "dynamic_threshold": None, "ucg_schedule": None,
    "log_every_t": 100, "normals_sequence": None, "cond_fn": None,
}
"""The ``sample()`` keywords that a sampler may be unable to honour, with their neutral values
(a neutral value is always accepted)."""

_CAPABILITY_OF = {"x0": "mask", "corrector_kwargs": "score_corrector"}  # part of another option
BASIC_OPTIONS = frozenset({"callback", "generator", "log_every_t", "cond_fn"})  # what most samplers honour

_WHY_NOT = {
    "eta": "it is deterministic",
    "mask": "it has no known-region blend for inpainting",
    "callback": "it reports no steps",
    "img_callback": "it reports no per-step x0 prediction",
    "score_corrector": "it has no hook to correct the noise prediction",
    "generator": "it draws no noise",
    "quantize_x0": "it does not quantize its x0 prediction",
    "temperature": "it draws no DDIM noise to scale",
    "noise_dropout": "it draws no DDIM noise to drop out",
    "dynamic_threshold": "it does not threshold its x0 prediction",
    "ucg_schedule": "its guidance scale is fixed for the whole run",
    "log_every_t": "it returns no intermediates",
    "normals_sequence": "the originals accept it and never use it",
    "partial_denoising": "it has no stochastic_encode/decode",
    "cond_fn": "it has no loss-guidance hook",
}

# (option, the option it acts through, why): the first is ignored while the second is neutral
_NEEDS: Tuple[Tuple[str, str, str], ...] = (
    ("x0", "mask", "x0 is the latent kept where mask is 1"),
    ("corrector_kwargs", "score_corrector", "they are the score_corrector's keywords"))


class UnsupportedSamplerOption(ValueError):
    """A ``sample()`` option that the chosen sampler cannot honour."""


@dataclass(frozen=True)
class SamplerCapabilities:
    """What a sampler honours beyond what every sampler takes (conditioning, x_T, guidance
    scale and unconditional conditioning, verbose): ``options`` names the ``sample()`` keywords
    it honours (``mask`` stands for mask/x0 blending, ``score_corrector`` for it and its
    ``corrector_kwargs``); ``partial_denoising`` is img2img's ``stochastic_encode``/``decode``.
    ``why_not`` holds sampler-specific reasons for refusals; ``needs`` options that act only
    through another one, as ``(option, other, why)``."""

    name: str
    options: FrozenSet[str] = BASIC_OPTIONS
    partial_denoising: bool = False
    why_not: Tuple[Tuple[str, str], ...] = ()
    needs: Tuple[Tuple[str, str, str], ...] = ()

    def __post_init__(self):
        unknown = set(self.options) - (set(OPTION_DEFAULTS) - set(_CAPABILITY_OF))
        if unknown:
            raise ValueError(f"unknown sampler options {sorted(unknown)}")

    def supports(self, option: str) -> bool:
        """Whether the sampler honours ``option`` (a ``sample()`` keyword, or
        ``partial_denoising``)."""
        if option == "partial_denoising":
            return self.partial_denoising
        if option not in OPTION_DEFAULTS:
            raise ValueError(f"unknown sampler option '{option}'; expected one of "
                             f"{', '.join(OPTION_DEFAULTS)} or partial_denoising")
        return _CAPABILITY_OF.get(option, option) in self.options

    def reason(self, option: str) -> str:
        """Why the sampler refuses ``option``."""
        capability = _CAPABILITY_OF.get(option, option)
        return dict(self.why_not).get(capability, _WHY_NOT[capability])


def is_neutral(option: str, value: Any) -> bool:
    """Whether ``value`` is ``option``'s neutral default (eta 0, temperature 1, None, ...); an
    empty dict counts as None (``corrector_kwargs={}``)."""
    default = OPTION_DEFAULTS[option]
    if default is None or value is None:
        return value is default or (default is None and isinstance(value, dict) and not value)
    return isinstance(value, (bool, int, float)) and value == default


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        text = repr(list(value))
        return text if len(text) <= 40 else f"a {type(value).__name__} of {len(value)}"
    if callable(value):
        return getattr(value, "__qualname__", type(value).__name__)
    kind = type(value).__name__
    return f"{'an' if kind[0].lower() in 'aeiou' else 'a'} {kind}"


def _name_list(names: Sequence[str]) -> str:
    """``euler, heun (each also _karras)`` for ``euler, euler_karras, heun, heun_karras``."""
    plain = [n for n in names if not (n.endswith("_karras") and n[:-len("_karras")] in names)]
    return ", ".join(plain) + (" (each also _karras)" if len(plain) < len(names) else "")


def check_options(capabilities: SamplerCapabilities, options: Mapping[str, Any],
                  supporters: Callable[[str], List[str]]) -> None:
    """Raise ``UnsupportedSamplerOption`` (one line: sampler, option, value, why, and the
    samplers ``supporters(option)`` that take it) for the first non-neutral option the sampler
    cannot honour, or that would be ignored because the option it acts through is neutral."""
    for option, value in options.items():
        if is_neutral(option, value) or capabilities.supports(option):
            continue
        names = supporters(option)
        takers = (f"samplers that take {option}: {_name_list(names)}" if names
                  else f"no sampler takes {option}")
        raise UnsupportedSamplerOption(
            f"the {capabilities.name} sampler does not support {option} ({_describe(value)}): "
            f"{capabilities.reason(option)}; {takers}")
    for option, other, why in _NEEDS + capabilities.needs:
        value = options.get(option, OPTION_DEFAULTS[option])
        other_value = options.get(other, OPTION_DEFAULTS[other])
        if not is_neutral(option, value) and is_neutral(other, other_value):
            raise UnsupportedSamplerOption(
                f"the {capabilities.name} sampler ignores {option} ({_describe(value)}) when "
                f"{other} is {OPTION_DEFAULTS[other]!r}: {why}")


class Sampler:
    """Base of every sampler: ``Sampler(model, device=None)`` (the device is the model's unless
    given) and the originals' ``sample(...)`` call. ``sample`` refuses the options the sampler
    cannot honour (``capabilities``), so none is silently dropped, then runs ``_sample``."""

    capabilities: SamplerCapabilities

    def __init__(self, model, device=None, **kwargs):
        self.model = model
        self.device = torch.device(device) if device is not None else model.device

    def register_buffer(self, name: str, attr: Any) -> None:
        """Store ``attr`` as an attribute, on the sampler's device when it is a tensor."""
        if isinstance(attr, torch.Tensor) and attr.device != self.device:
            attr = attr.to(self.device)
        setattr(self, name, attr)

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: Sequence[int], conditioning: Any = None,
               callback: Optional[Callable] = None, normals_sequence=None,
               img_callback: Optional[Callable] = None, quantize_x0: bool = False,
               eta: float = 0., mask: Optional[torch.Tensor] = None,
               x0: Optional[torch.Tensor] = None, temperature: float = 1.,
               noise_dropout: float = 0., score_corrector=None, corrector_kwargs=None,
               verbose: bool = True, x_T: Optional[torch.Tensor] = None, log_every_t: int = 100,
               unconditional_guidance_scale: float = 1., unconditional_conditioning: Any = None,
               dynamic_threshold: Optional[float] = None,
               ucg_schedule: Optional[Sequence[float]] = None, generator: Generator = None,
               cond_fn: Optional[CondFn] = None,
               **kwargs) -> Tuple[torch.Tensor, Optional[Dict[str, List[torch.Tensor]]]]:
        """Draw ``batch_size`` samples of ``shape`` (C, H, W) in ``S`` steps, from ``x_T`` or
        from noise drawn with ``generator`` (one, or one per batch element). Returns
        ``(samples, intermediates)``; ``callback(i)`` and ``img_callback(pred_x0, i)`` follow
        each step. ``cond_fn`` adds loss guidance (``LossGuidance``) to the guided prediction.
        Extra keywords are accepted and unused, as in the originals."""
        arguments = dict(locals())
        from ldm.models.diffusion.samplers import samplers_supporting  # the registry imports us

        check_options(self.capabilities, {k: arguments[k] for k in OPTION_DEFAULTS},
                      samplers_supporting)
        warn_on_batch_mismatch(conditioning, batch_size)
        request = SimpleNamespace(**{k: v for k, v in arguments.items()
                                     if k not in ("self", "S", "batch_size", "shape", "kwargs")})
        return self._sample(S, (batch_size, *shape), request)

    def _sample(self, S: int, size: Tuple[int, ...], request: SimpleNamespace):
        """Sample ``size`` (batch first) in ``S`` steps; ``request`` holds the other keywords
        of ``sample`` (already checked against ``capabilities``)."""
        raise NotImplementedError
