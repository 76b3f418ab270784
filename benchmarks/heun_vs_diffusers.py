"""Our Heun sampler against diffusers' ``HeunDiscreteScheduler`` on the shipped txt2img model
(v-prediction, cosine schedule): the same network as the denoiser (``apply_model`` with
classifier-free guidance), the same start noise x_T and the same noise levels, so any difference
is the samplers' own. Prints the largest absolute difference of the final latents.

How diffusers is set up to define the same thing: ``trained_betas`` = the model's betas,
``prediction_type="v_prediction"``; the start is x_T * sqrt(1 + sigma_0^2) (DDIM's meaning of x_T,
as ours; diffusers' ``linspace`` start would be x_T * sigma_0, a 1e-4 relative difference at
sigma_0 = 80). Our sigma schedules start at min(sigma_max, 80) (``sigma_schedule``):
* ``karras``: ``use_karras_sigmas=True`` with ``sigma_max=80`` registered in its config;
* ``default``: our (fractional) timesteps passed as ``timesteps=``; diffusers interpolates sigma
  linearly between integer timesteps where we interpolate log(sigma), so it is run twice: with its
  own noise levels, and with ours written into ``scheduler.sigmas``.

    python benchmarks/heun_vs_diffusers.py [--steps 20] [--scale 5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import ldm  # noqa: E402
from ldm.models.diffusion.k_diffusion import KDiffusionSampler  # noqa: E402
from ldm.models.diffusion.sampling_util import guided_model_output  # noqa: E402
from ldm.models.diffusion.sigma_schedule import vp_to_sigma_space  # noqa: E402


def run_diffusers(scheduler, model, x_T, cond, uncond, scale):
    """diffusers' sampling loop with our model as the network."""
    x = vp_to_sigma_space(x_T, scheduler.sigmas[0])
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        out = guided_model_output(model.apply_model, x_in, t.float().expand(x.shape[0]), cond,
                                  uncond, scale)
        x = scheduler.step(out, t, x).prev_sample
    return x


@torch.no_grad()
def main(argv=None) -> None:
    import diffusers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scale", type=float, default=5.0)
    args = parser.parse_args(argv)
    model = ldm.load("txt2img", device="cpu").model
    prompts = ["a red circle", "a blue square"]
    cond = model.get_learned_conditioning(prompts)
    uncond = model.get_learned_conditioning([""] * len(prompts))
    x_T = torch.randn(len(prompts), 4, 16, 16, generator=torch.Generator().manual_seed(0))

    def scheduler(**kwargs):
        return diffusers.HeunDiscreteScheduler(
            num_train_timesteps=model.num_timesteps, trained_betas=model.betas.float().numpy(),
            prediction_type="v_prediction", **kwargs)

    for kind in ("default", "karras"):
        sampler = KDiffusionSampler(model, "heun", kind)
        sigmas = sampler.get_sigmas(args.steps)
        ours, _ = sampler.sample(args.steps, len(prompts), (4, 16, 16), cond, x_T=x_T,
                                 unconditional_guidance_scale=args.scale,
                                 unconditional_conditioning=uncond, verbose=False)
        runs = {}
        if kind == "karras":
            theirs = scheduler(use_karras_sigmas=True)
            theirs.register_to_config(sigma_max=float(sigmas[0]), sigma_min=None)
            theirs.set_timesteps(args.steps)
            runs["Karras sigmas from sigma_max = 80"] = theirs
        else:
            timesteps = sampler.schedule.sigma_to_t(sigmas[:-1]).tolist()
            theirs = scheduler()
            theirs.set_timesteps(timesteps=timesteps)
            runs["our timesteps, its sigma interpolation"] = theirs
            theirs = scheduler()
            theirs.set_timesteps(timesteps=timesteps)
            levels = sigmas.float()
            theirs.sigmas = torch.cat([levels[:1], levels[1:-1].repeat_interleave(2), levels[-1:]])
            runs["our timesteps and sigmas"] = theirs
        for label, theirs in runs.items():
            x = run_diffusers(theirs, model, x_T, cond, uncond, args.scale)
            print(f"heun {kind}, {args.steps} steps, diffusers with {label}: "
                  f"max |ours - diffusers| = {float((ours - x).abs().max()):.2e} "
                  f"(max |latent| {float(ours.abs().max()):.2f})")


if __name__ == "__main__":
    main()
