"""End-to-end text-to-image, ours against diffusers' StableDiffusionPipeline on the same weights.

Ours: ``load_model_from_config`` (random seeded weights, or ``--ckpt``), the prompt encoded once
(``encode_prompts``), DDIM or DPM-Solver++(2M) (``--sampler``) with classifier-free guidance,
``decode_latents``. Diffusers: a ``StableDiffusionPipeline`` whose UNet, VAE and CLIP text encoder
hold our weight tensors (converted with diffusers' single-file functions), our tokenizer, and the
matching scheduler (DDIM: ``clip_sample=False, set_alpha_to_one=False, steps_offset=1``). Both
start from the same initial latent; the final latents and images are compared, then the two are
timed alternately and the medians and the ratio ours / diffusers printed: whole images, and the
denoising loop alone in steps per second (it/s, the figure diffusers' progress bar shows: prompt
embeddings given, no decoding). Peak memory is measured first, each side in its own subprocess
(peak RSS while generating one image; on CUDA also ``torch.cuda.max_memory_allocated``).

    python benchmarks/txt2img_end_to_end.py                    # SD 1.x, 512 px, 20 DDIM steps
    python benchmarks/txt2img_end_to_end.py --small            # 256 px, 5 steps: a quick run
    python benchmarks/txt2img_end_to_end.py --device cuda      # fp16 weights on both sides
    python benchmarks/txt2img_end_to_end.py --precision full   # ours in float32 too: the same dtype

Each side runs at its default precision. Diffusers: its weights in ``--dtype`` (fp32 on CPU, fp16
on CUDA by default). Ours: ``--precision autocast``, the scripts' default, which on a CPU with
native bfloat16 is bf16 autocast with the UNet's and text encoder's linear and convolution weights
stored in bf16 and the VAE decoding in float32, as ``ldm.load`` and the scripts run; elsewhere (and
with ``--precision full``) ours runs in ``--dtype`` like diffusers. The precision of each side is
printed; when they differ, the latent and image differences measure bf16 against float32 (reported,
not an error). SD 1.x configs only (diffusers' converter for the CLIP text encoder). Needs
``pip install -e ".[bench]"``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    CONFIGS,
    DTYPES,
    alternate,
    current_rss_bytes,
    diffusers_text_encoder,
    diffusers_unet,
    diffusers_vae,
    median_times,
    peak_rss_bytes,
    perturb_zero_parameters,
    reset_peak_rss,
    resolve_dtype,
)
from ldm.inference.pipeline import decode_latents, encode_prompts  # noqa: E402
from ldm.inference.precision import autocast_dtype, autocast_weight_retyper, precision_scope  # noqa: E402
from ldm.models.diffusion.samplers import get_sampler  # noqa: E402
from ldm.modules.token_merging import token_merging  # noqa: E402
from ldm.util import load_model_from_config, pick_device  # noqa: E402

SIDES = ("ours", "diffusers")
SAMPLERS = ("ddim", "dpm")
Result = Tuple[torch.Tensor, torch.Tensor]  # (final latent, image in [0, 1])
Retyper = Optional[Callable[[torch.nn.Module], None]]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIGS["sd1"]), help="an SD 1.x inference config")
    parser.add_argument("--ckpt", default=None, help="weights (default: random, seeded)")
    parser.add_argument("--prompt", default="a red circle above a blue square")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                        help="ddim, or dpm: DPM-Solver++(2M) (diffusers: DPMSolverMultistepScheduler)")
    parser.add_argument("--small", action="store_true", help="256x256 and 5 steps unless --size/--steps say")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 512)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 20)")
    parser.add_argument("--scale", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--repeats", type=int, default=2, help="timed images per side (after one untimed)")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the memory subprocesses")
    parser.add_argument("--memory-only", action="store_true", help="only the memory subprocesses")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: best available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="dtype of the weights and latents (default: fp16 on CUDA, else fp32); ours under "
                             "bf16 autocast on a CPU keeps float32 outside its bf16 layers")
    parser.add_argument("--precision", choices=("autocast", "full"), default="autocast",
                        help="ours: autocast (the scripts' default: bf16 autocast on a CPU with native bf16) or "
                             "full (--dtype, like diffusers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--token-merging", type=float, default=None, metavar="RATIO",
                        help="ours with token merging (as the scripts' --token-merging; default: off)")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or (256 if args.small else 512)
    args.steps = args.steps or (5 if args.small else 20)
    if args.size % 8:
        parser.error(f"--size must be a multiple of 8, got {args.size}")
    return args


# ---------------------------------------------------------------------------------------------
# The two sides
# ---------------------------------------------------------------------------------------------
def ours_precision(args: argparse.Namespace, device: torch.device) -> Tuple[Optional[torch.dtype], Retyper]:
    """Our autocast dtype (None: none) and the function that stores the autocast weights in it
    (None: they stay in ``--dtype``), as ``ldm.load`` chooses them for ``--precision``."""
    dtype = autocast_dtype(device, args.precision, bf16=False)
    return dtype, autocast_weight_retyper(device, dtype)


def precision_name(autocast: Optional[torch.dtype], weights: torch.dtype, retyped: bool = False) -> str:
    name = str(weights).replace("torch.", "")
    if autocast is None:
        return name
    stored = f", {str(autocast).replace('torch.', '')} UNet/text-encoder weights" if retyped else ""
    return f"{str(autocast).replace('torch.', '')} autocast over {name}{stored}"


def load_ours(args: argparse.Namespace, device: torch.device,
              retype: Retyper = None) -> Tuple[torch.nn.Module, DictConfig]:
    """Our LatentDiffusion as every script loads it: in ``--dtype``, or with ``retype`` (ours under
    bf16 autocast on a CPU) float32 with the autocast weights stored in bf16, cast once from the
    checkpoint; random weights get their zero layers filled before that."""
    config = OmegaConf.load(args.config)
    if not config.model.params.cond_stage_config.target.endswith("FrozenCLIPEmbedder"):
        raise SystemExit(f"{args.config}: only SD 1.x configs (FrozenCLIPEmbedder) are supported")
    torch.manual_seed(args.seed)
    model = load_model_from_config(config, args.ckpt, device=device, verbose=False,
                                   retype=retype if args.ckpt else None)
    if args.ckpt is None:
        perturb_zero_parameters(model.model)
        if retype is not None:
            retype(model)
    return (model if retype is not None else model.to(resolve_dtype(args.dtype, device))), config


def diffusers_scheduler(config: DictConfig, sampler: str):
    """diffusers' scheduler doing what our ``sampler`` does on the config's noise schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    p = config.model.params
    schedule = dict(num_train_timesteps=p.get("timesteps", 1000), beta_start=p.linear_start,
                    beta_end=p.linear_end, beta_schedule="scaled_linear",
                    prediction_type="v_prediction" if p.get("parameterization", "eps") == "v" else "epsilon")
    if sampler == "ddim":
        return DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                             timestep_spacing="leading")
    # steps_offset is unused by "linspace" spacing; 1 only silences the pipeline's warning
    return DPMSolverMultistepScheduler(**schedule, algorithm_type="dpmsolver++", solver_order=2, steps_offset=1,
                                       lower_order_final=True, final_sigmas_type="sigma_min")


def diffusers_pipeline(model: torch.nn.Module, config: DictConfig, sampler: str, image_size: int):
    """A StableDiffusionPipeline on our model's weight tensors and tokenizer."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=diffusers_vae(model.first_stage_model, config),
        text_encoder=diffusers_text_encoder(model.cond_stage_model),
        tokenizer=model.cond_stage_model.tokenizer,
        unet=diffusers_unet(model.model.diffusion_model, config, image_size=image_size),
        scheduler=diffusers_scheduler(config, sampler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample_ours(sampler, args: argparse.Namespace, x_T: torch.Tensor, c, uc) -> torch.Tensor:
    with token_merging(sampler.model.model.diffusion_model, args.token_merging):
        samples, _ = sampler.sample(S=args.steps, batch_size=1, shape=list(x_T.shape[1:]), conditioning=c,
                                    verbose=False, eta=0.0, x_T=x_T.clone(),
                                    unconditional_guidance_scale=args.scale, unconditional_conditioning=uc)
    return samples


def ours_generator(model: torch.nn.Module, args: argparse.Namespace,
                   autocast: Optional[torch.dtype]) -> Callable[[torch.Tensor], Result]:
    """Ours as ``Pipeline.generate`` runs: under ``autocast`` (None: none), the VAE in float32."""
    sampler = get_sampler(args.sampler, model)

    def generate(x_T: torch.Tensor) -> Result:
        with torch.no_grad(), precision_scope(x_T.device, autocast):
            c, uc = encode_prompts(model, [args.prompt], "", args.scale)
            samples = _sample_ours(sampler, args, x_T, c, uc)
            # the sampler keeps its arithmetic in float32 (the schedule's dtype); the decoder takes the model's
            return samples, decode_latents(model, samples.to(x_T.dtype))
    return generate


def ours_loop(model: torch.nn.Module, args: argparse.Namespace,
              autocast: Optional[torch.dtype]) -> Callable[[torch.Tensor], object]:
    """Our denoising loop alone: prompts encoded beforehand, no decoding."""
    sampler = get_sampler(args.sampler, model)
    device = next(model.parameters()).device
    with torch.no_grad(), precision_scope(device, autocast):
        c, uc = encode_prompts(model, [args.prompt], "", args.scale)

    def loop(x_T: torch.Tensor) -> object:
        with torch.no_grad(), precision_scope(device, autocast):
            return _sample_ours(sampler, args, x_T, c, uc)
    return loop


def _pipe_settings(args: argparse.Namespace, x_T: torch.Tensor) -> dict:
    """The call arguments both diffusers sides share."""
    return dict(height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=args.scale,
                latents=x_T.clone())


def diffusers_loop(pipe, args: argparse.Namespace) -> Callable[[torch.Tensor], object]:
    """diffusers' denoising loop alone: prompt embeddings given, latents returned undecoded."""
    with torch.inference_mode():
        c, uc = pipe.encode_prompt(args.prompt, pipe.device, 1, True, "")
    return lambda x_T: pipe(prompt_embeds=c, negative_prompt_embeds=uc, output_type="latent",
                            **_pipe_settings(args, x_T)).images


def diffusers_generator(pipe, args: argparse.Namespace) -> Callable[[torch.Tensor], Result]:
    def generate(x_T: torch.Tensor) -> Result:
        final = {}

        def keep_latents(pipeline, step, timestep, tensors):
            final["latents"] = tensors["latents"]
            return tensors

        images = pipe(args.prompt, output_type="pt", callback_on_step_end=keep_latents,
                      callback_on_step_end_tensor_inputs=["latents"], **_pipe_settings(args, x_T)).images
        return final["latents"], images
    return generate


def initial_latent(args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(args.seed)
    latent = torch.randn(1, 4, args.size // 8, args.size // 8, generator=generator)
    return latent.to(device=device, dtype=resolve_dtype(args.dtype, device))


def build_side(side: str, args: argparse.Namespace, device: torch.device) -> Callable[[torch.Tensor], Result]:
    """One side alone (the other side's objects dropped), for the memory subprocesses."""
    if side == "ours":
        autocast, retype = ours_precision(args, device)
        return ours_generator(load_ours(args, device, retype)[0], args, autocast)
    model, config = load_ours(args, device)
    pipe = diffusers_pipeline(model, config, args.sampler, args.size)
    del model
    gc.collect()
    return diffusers_generator(pipe, args)


# ---------------------------------------------------------------------------------------------
# Memory: one subprocess per side
# ---------------------------------------------------------------------------------------------
def run_child(args: argparse.Namespace) -> None:
    """Generate one image and write the RSS after loading and the peak RSS while generating."""
    device = pick_device(args.device)
    generate = build_side(args.child, args, device)
    x_T = initial_latent(args, device)
    gc.collect()
    loaded = current_rss_bytes()
    if not reset_peak_rss():
        raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs): no memory figures here")
    if device.type == "cuda":
        loaded_cuda = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        generate(x_T)
    result = {"loaded_mib": loaded / 2 ** 20, "peak_mib": peak_rss_bytes() / 2 ** 20}
    if device.type == "cuda":
        result.update(cuda_loaded_mib=loaded_cuda / 2 ** 20,
                      cuda_peak_mib=torch.cuda.max_memory_allocated(device) / 2 ** 20)
    Path(args.out).write_text(json.dumps(result))


def measure_memory(args: argparse.Namespace, argv) -> Dict[str, dict]:
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for side in SIDES:
            out = os.path.join(workdir, f"{side}.json")
            subprocess.run([sys.executable, __file__, *argv, "--child", side, "--out", out], check=True)
            results[side] = json.loads(Path(out).read_text())
    return results


# ---------------------------------------------------------------------------------------------
# Agreement and timing: both sides in this process, sharing the weights
# ---------------------------------------------------------------------------------------------
def compare_and_time(args: argparse.Namespace, device: torch.device) -> dict:
    model, config = load_ours(args, device)
    pipe = diffusers_pipeline(model, config, args.sampler, args.size)  # holds the --dtype tensors
    autocast, retype = ours_precision(args, device)
    if retype is not None:
        retype(model)  # ours: bf16 copies of its autocast weights; diffusers keeps the float32 tensors
    generators = {"ours": ours_generator(model, args, autocast), "diffusers": diffusers_generator(pipe, args)}
    loops = {"ours": ours_loop(model, args, autocast), "diffusers": diffusers_loop(pipe, args)}
    x_T = initial_latent(args, device)
    with torch.inference_mode():
        (z_ours, image_ours), (z_theirs, image_theirs) = (generators[side](x_T) for side in SIDES)
        times = alternate({side: (lambda fn=fn: fn(x_T)) for side, fn in generators.items()}, args.repeats, device)
        for loop in loops.values():
            loop(x_T)  # warm-up
        loop_times = alternate({side: (lambda fn=fn: fn(x_T)) for side, fn in loops.items()}, args.repeats, device)
    z_ours, z_theirs, image_ours, image_theirs = (t.float() for t in (z_ours, z_theirs, image_ours, image_theirs))
    ours_weights = resolve_dtype(args.dtype, device) if retype is None else torch.float32
    return {
        "precision": {"ours": precision_name(autocast, ours_weights, retype is not None),
                      "diffusers": precision_name(None, pipe.unet.dtype)},
        "latent_max_diff": (z_ours - z_theirs).abs().max().item(),
        "latent_max_abs": z_theirs.abs().max().item(),
        "image_max_diff": (image_ours - image_theirs).abs().max().item(),
        "image_mean_diff": (image_ours - image_theirs).abs().mean().item(),
        "image_unsaturated": ((image_theirs > 0.01) & (image_theirs < 0.99)).float().mean().item(),
        "times": {side: median_times(t) for side, t in times.items()},
        "loop_times": {side: median_times(t) for side, t in loop_times.items()},
    }


def print_report(args: argparse.Namespace, memory: Dict[str, dict], run: dict) -> None:
    import diffusers

    device = pick_device(args.device)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"txt2img {args.size}x{args.size}, {args.steps} {args.sampler} steps, scale {args.scale}, batch 1, "
          f"{'weights ' + args.ckpt if args.ckpt else 'random weights'}, {resolve_dtype(args.dtype, device)} "
          f"on {device}{gpu}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"diffusers {diffusers.__version__}")
    ours_precision_name, theirs_precision_name = run["precision"]["ours"], run["precision"]["diffusers"]
    print(f"precision: ours {ours_precision_name}; diffusers {theirs_precision_name}")
    if args.token_merging is not None:
        print(f"ours with token merging at ratio {args.token_merging} (diffusers without)")
    if ours_precision_name != theirs_precision_name:
        print("(the precisions differ: the differences below are those of the precisions, not a check that fails)")
    print(f"agreement: final latent max |diff| {run['latent_max_diff']:.3g} (max |latent| "
          f"{run['latent_max_abs']:.3g}); image max |diff| {run['image_max_diff']:.3g}, mean "
          f"{run['image_mean_diff']:.3g} ({100 * run['image_unsaturated']:.0f}% of pixels not saturated)")
    (ours_wall, ours_cpu), (theirs_wall, theirs_cpu) = run["times"]["ours"], run["times"]["diffusers"]
    print(f"median of {args.repeats} per side, seconds per image: ours wall {ours_wall:.2f} cpu {ours_cpu:.2f}; "
          f"diffusers wall {theirs_wall:.2f} cpu {theirs_cpu:.2f}; ratio ours/diffusers wall "
          f"{ours_wall / theirs_wall:.3f} cpu {ours_cpu / theirs_cpu:.3f}")
    (ours_loop_s, ours_loop_cpu), (theirs_loop_s, theirs_loop_cpu) = (run["loop_times"][side] for side in SIDES)
    print(f"denoising loop alone (median of {args.repeats}): ours {args.steps / ours_loop_s:.2f} it/s "
          f"({ours_loop_s:.3f} s), diffusers {args.steps / theirs_loop_s:.2f} it/s ({theirs_loop_s:.3f} s); "
          f"ratio ours/diffusers in steps per second {theirs_loop_s / ours_loop_s:.3f}; CPU s ours "
          f"{ours_loop_cpu:.2f}, diffusers {theirs_loop_cpu:.2f}, ratio {ours_loop_cpu / theirs_loop_cpu:.3f}")
    print_memory(memory)


def print_memory(memory: Dict[str, dict]) -> None:
    for side, m in memory.items():
        cuda = (f"; CUDA allocated after loading {m['cuda_loaded_mib']:.0f} MiB, peak {m['cuda_peak_mib']:.0f} MiB"
                if "cuda_peak_mib" in m else "")
        print(f"memory {side:9s}: RSS after loading {m['loaded_mib']:8.0f} MiB, peak while generating "
              f"{m['peak_mib']:8.0f} MiB (+{m['peak_mib'] - m['loaded_mib']:.0f}){cuda}")
    if memory:
        print(f"peak memory ratio ours/diffusers {memory['ours']['peak_mib'] / memory['diffusers']['peak_mib']:.3f}")
        if "cuda_peak_mib" in memory["ours"]:
            print(f"peak CUDA memory ratio ours/diffusers "
                  f"{memory['ours']['cuda_peak_mib'] / memory['diffusers']['cuda_peak_mib']:.3f}")


def main() -> None:
    argv = sys.argv[1:]
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return
    memory = {} if args.skip_memory else measure_memory(args, argv)
    if args.memory_only:
        print_memory(memory)
        return
    run = compare_and_time(args, pick_device(args.device))
    print_report(args, memory, run)


if __name__ == "__main__":
    main()
