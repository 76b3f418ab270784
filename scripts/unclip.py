"""SD 2.1 unCLIP: variations of an image, ``python scripts/unclip.py --init-img in.png --config
configs/stable-diffusion/v2-1-stable-unclip-h-inference.yaml --ckpt sd21-unclip-h.ckpt``, or images
of a prompt through the Karlo prior (unCLIP-L), ``--prompt "..." --prior-config
configs/karlo/prior_1B_vit_l.yaml --prior-ckpt ... --prior-clip ... --prior-clip-stats ...``.
Defaults are those of the Stability demo (20 DDIM steps, scale 10, noise level 0); see README.md."""
import argparse

from ldm.inference import runner
from ldm.inference.parsers import build_parser as _build_parser


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("unclip")


def main(argv=None) -> None:
    runner.main("unclip", argv)


if __name__ == "__main__":
    main()
