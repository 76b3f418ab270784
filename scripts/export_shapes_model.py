"""Export a trained shapes model for shipping: ``python scripts/export_shapes_model.py
--config configs/shapes/txt2img.yaml --ckpt logs/<run>/checkpoints/last.ckpt --out checkpoints/shapes-txt2img``
writes ``<out>.yaml`` (inference config) and ``<out>.safetensors`` (fp16 weights, EMA UNet) and
checks that they load strictly. See docs/SHAPES.md."""
import argparse
import sys

from omegaconf import OmegaConf


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="export_shapes_model.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the training config (configs/shapes/*.yaml)")
    parser.add_argument("--ckpt", required=True, help="the run's checkpoint (logs/<run>/checkpoints/last.ckpt)")
    parser.add_argument("--out", required=True, help="output path without extension (checkpoints/shapes-<name>)")
    opt = parser.parse_args(argv)

    from ldm.evaluation.shipping import export

    header = (f"# Inference config of {opt.out}.safetensors, exported from {opt.config} by\n"
              f"# scripts/export_shapes_model.py. Training settings and how it was measured: docs/SHAPES.md.\n")
    config_path, weights_path = export(OmegaConf.load(opt.config), opt.ckpt, opt.out, header)
    print(f"wrote {config_path} and {weights_path}; they load strictly")
    if OmegaConf.load(config_path).model.target.endswith("AutoencoderKL"):
        from ldm.evaluation.shipping import latent_scale_factor
        from ldm.util import load_model_from_config

        autoencoder = load_model_from_config(OmegaConf.load(config_path), weights_path, device="cpu", verbose=False)
        scale = latent_scale_factor(autoencoder)
        print(f"scale_factor for the diffusion configs (1 / std of the latents): {scale:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
