"""Sampling with fewer steps than the model was trained with (Nichol & Dhariwal 2021, sec. 4):
keep a subset S of the training timesteps and use the process whose cumulative alphas are those
of S, i.e. beta_i = 1 - abar_{s_i} / abar_{s_{i-1}}."""
from __future__ import annotations

from typing import Iterable, List, Sequence, Set, Union

import torch

from ldm.modules.karlo.kakao.modules.diffusion.gaussian_diffusion import GaussianDiffusion


def _ddim_stride_steps(num_timesteps: int, desired_count: int) -> Set[int]:
    """``range(0, T, stride)`` for the smallest integer stride that yields ``desired_count`` steps."""
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired_count:
            return set(range(0, num_timesteps, stride))
    raise ValueError(f"cannot create exactly {desired_count} steps out of {num_timesteps} with an integer stride")


def _section_steps(start: int, size: int, count: int) -> List[int]:
    """``count`` timesteps spread evenly over ``[start, start + size)``, both ends included,
    rounded half to even (Python's ``round``), as the original does."""
    if size < count:
        raise ValueError(f"cannot divide a section of {size} steps into {count}")
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    return [start + round(k * stride) for k in range(count)]


def space_timesteps(num_timesteps: int, section_counts: Union[str, Sequence[int]]) -> Set[int]:
    """The training timesteps to keep. ``section_counts`` splits ``[0, num_timesteps)`` into equal
    sections (the first ``num_timesteps % n`` one step longer) and takes that many evenly spaced
    steps from each: ``"25"`` or ``[25]`` gives 25 steps from 0 to T - 1. ``"ddimN"`` takes DDIM's
    integer stride instead; ``"fast27"`` is "10,10,3,2,2" with T - 1 replaced by T - 3."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            return _ddim_stride_steps(num_timesteps, int(section_counts[len("ddim"):]))
        if section_counts == "fast27":
            steps = space_timesteps(num_timesteps, "10,10,3,2,2")
            steps.remove(num_timesteps - 1)  # fewer DDIM artifacts from the noisiest step
            steps.add(num_timesteps - 3)
            return steps
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        kept += _section_steps(start, size, count)
        start += size
    return set(kept)


class SpacedDiffusion(GaussianDiffusion):
    """The diffusion restricted to ``use_timesteps``. Step i of this process is training timestep
    ``timestep_map[i]``, which is what the network is given (see :meth:`_wrap_model`)."""

    def __init__(self, use_timesteps: Iterable[int], **kwargs):
        self.use_timesteps = set(use_timesteps)
        base = GaussianDiffusion(**kwargs)
        self.original_num_steps = base.num_timesteps
        self.timestep_map = torch.tensor(sorted(t for t in self.use_timesteps if 0 <= t < base.num_timesteps))
        kept_alphas_cumprod = base.alphas_cumprod[self.timestep_map]
        previous = torch.cat([torch.ones(1, dtype=torch.float64), kept_alphas_cumprod[:-1]])
        kwargs["betas"] = (1 - kept_alphas_cumprod / previous).numpy()
        super().__init__(**kwargs)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def _wrap_model(self, model):
        """``model`` called with the training timesteps instead of this process's step indices."""
        def wrapped(x: torch.Tensor, ts: torch.Tensor, **kwargs) -> torch.Tensor:
            original = self.timestep_map[ts.detach().cpu().long()].to(device=ts.device, dtype=ts.dtype)
            return model(x, original, **kwargs)
        return wrapped
