"""Measure the shapes models (docs/SHAPES.md): ``python scripts/evaluate_shapes.py txt2img``.

Tasks: ``detector`` (the detector's own accuracy on ground-truth renders), ``autoencoder``
(reconstruction PSNR), ``txt2img`` (colour/shape/position accuracy, seen vs held-out pairs),
``relations`` (whether the relation word or the starting noise decides the layout: each two-object
prompt and its mirror from the same noise), ``inpaint``, ``depth``, ``upscale``, ``class`` (the
class-conditional model's colour/shape accuracy), ``pixel`` (the pixel-space DDPM's samples read as
one valid shape, DDIM 50 at eta 1 (sample_diffusion.py's default) and 0 vs ancestral 1000 steps). Models default
to the shipped ones in checkpoints/.
"""
import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {
    "autoencoder": "shapes-autoencoder-kl-f4",
    "txt2img": "shapes-txt2img",
    "inpaint": "shapes-inpainting",
    "depth": "shapes-depth",
    "upscale": "shapes-x4-upscaler",
    "class": "shapes-class-conditional",
    "pixel": "shapes-pixel-ddpm",
}
TASKS = ("detector", "relations", *SHIPPED)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate_shapes.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=TASKS, help="what to measure")
    parser.add_argument("--config", help="model config (default: checkpoints/<shipped model>.yaml)")
    parser.add_argument("--ckpt", help="model weights (default: checkpoints/<shipped model>.safetensors)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--scale", type=float, default=None,
                        help="classifier-free guidance scale (default 5; class: 3, as sample_class.py)")
    parser.add_argument("--sampler", default="dpm",
                        help="sampler name (default dpm: DPM-Solver++ 2M); depth samples with DDIM, as depth2img")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=None,
                        help="images for inpaint/depth/upscale/pixel (default 96) and autoencoder (default 256)")
    parser.add_argument("--single-repeats", type=int, default=4,
                        help="txt2img/detector/class: times each of the 24 colour/shape pairs is asked for (default 4)")
    parser.add_argument("--two-count", type=int, default=48,
                        help="txt2img/detector: two-object prompts, each of seen and held-out; relations: "
                             "prompt pairs (default 48)")
    parser.add_argument("--noise-level", type=int, default=20, help="upscale: noise level of the input (default 20)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps")
    parser.add_argument("--precision", choices=["autocast", "full"], default="autocast",
                        help="as the scripts' --precision (default autocast: bf16 on a CPU with native bfloat16)")
    parser.add_argument("--cache-interval", type=int, default=None, metavar="N",
                        help="sample with DeepCache, the whole UNet every N steps (as the scripts' flag)")
    parser.add_argument("--cache-depth", type=int, default=1, metavar="D",
                        help="DeepCache's shallow branch: D+1 blocks at each end of the UNet (default 1)")
    parser.add_argument("--token-merging", type=float, default=None, metavar="RATIO",
                        help="sample with token merging at this ratio (as the scripts' flag; default off)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    return parser


PIPELINE_TASKS = {"txt2img": "txt2img", "relations": "txt2img", "inpaint": "inpaint", "depth": "depth2img",
                  "upscale": "upscale", "class": "class", "pixel": "unconditional"}


def model_paths(task: str, config: str, ckpt: str):
    config = config or str(REPO / "checkpoints" / f"{SHIPPED[task]}.yaml")
    ckpt = ckpt or str(REPO / "checkpoints" / f"{SHIPPED[task]}.safetensors")
    for path in (config, ckpt):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist (train the shapes models first: docs/SHAPES.md)")
    return config, ckpt


def load_autoencoder(config: str, ckpt: str, device: str):
    from omegaconf import OmegaConf

    from ldm.util import load_model_from_config

    config, ckpt = model_paths("autoencoder", config, ckpt)
    return load_model_from_config(OmegaConf.load(config), ckpt, device=device, verbose=False)


def run(opt: argparse.Namespace):
    import ldm
    from ldm.evaluation import benchmarks
    from ldm.modules.diffusionmodules.deepcache import deep_cache
    from ldm.modules.token_merging import token_merging

    scale = opt.scale if opt.scale is not None else (3.0 if opt.task == "class" else 5.0)
    sampling = dict(seed=opt.seed, steps=opt.steps, scale=scale, batch_size=opt.batch_size)
    if opt.task == "detector":
        return benchmarks.detector_accuracy(opt.single_repeats, opt.two_count, opt.seed)
    count = opt.count or 96
    if opt.task == "autoencoder":
        return benchmarks.autoencoder_psnr(load_autoencoder(opt.config, opt.ckpt, opt.device), opt.count or 256,
                                           opt.seed)
    config, ckpt = model_paths("txt2img" if opt.task == "relations" else opt.task, opt.config, opt.ckpt)
    pipe = ldm.load(PIPELINE_TASKS[opt.task], ckpt=ckpt, config=config, device=opt.device, precision=opt.precision)
    # A new cache per run (the timestep rises); the merging's destinations drawn on through the whole evaluation.
    with deep_cache(pipe.unet, opt.cache_interval, opt.cache_depth), token_merging(pipe.unet, opt.token_merging):
        return sample_and_measure(opt, pipe, count, sampling)


def sample_and_measure(opt: argparse.Namespace, pipe, count: int, sampling: dict):
    from ldm.evaluation import benchmarks

    if opt.task == "depth":
        return benchmarks.depth_adherence(pipe, count, **sampling)
    if opt.task == "pixel":
        return benchmarks.pixel_ddpm_validity(pipe, count, opt.seed, batch_size=opt.batch_size)
    sampling["sampler"] = opt.sampler
    if opt.task == "txt2img":
        return benchmarks.txt2img_adherence(pipe, opt.single_repeats, opt.two_count, **sampling)
    if opt.task == "class":
        return benchmarks.class_accuracy(pipe, opt.single_repeats, **sampling)
    if opt.task == "relations":
        return benchmarks.relation_sensitivity(pipe, opt.two_count, **sampling)
    if opt.task == "inpaint":
        return benchmarks.inpainting_accuracy(pipe, count, **sampling)
    return benchmarks.upscaler_psnr(pipe, count, noise_level=opt.noise_level, **sampling)


def main(argv=None) -> int:
    opt = build_parser().parse_args(argv)
    for name in ("steps", "count", "single_repeats", "two_count", "batch_size", "cache_interval"):
        if getattr(opt, name) is not None and getattr(opt, name) < 1:
            print(f"evaluate_shapes.py: error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if opt.cache_depth < 0:
        print("evaluate_shapes.py: error: --cache-depth must be 0 or more", file=sys.stderr)
        return 2
    if opt.token_merging is not None:
        from ldm.modules.token_merging import check_ratio

        try:
            check_ratio(opt.token_merging)
        except ValueError as err:
            print(f"evaluate_shapes.py: error: --token-merging: {err}", file=sys.stderr)
            return 2
    from ldm.inference.errors import UsageError
    from ldm.util import CheckpointError

    started = time.time()
    try:
        report = run(opt)
    except (FileNotFoundError, UsageError, CheckpointError) as err:
        print(f"evaluate_shapes.py: error: {err}", file=sys.stderr)
        return 2
    print(report.markdown())
    print(f"({time.time() - started:.0f} s)")
    if opt.json:
        with open(opt.json, "w", encoding="utf-8") as handle:
            json.dump({"task": opt.task, "settings": report.settings, "numbers": report.numbers}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
