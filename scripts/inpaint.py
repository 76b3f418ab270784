"""Inpainting: ``python scripts/inpaint.py --init-img in.png --mask mask.png --prompt "..."
--config <yaml> --ckpt <file>``. Works with an inpainting model (v2-inpainting-inference.yaml) or,
by blending the known region while sampling, with any text-to-image model. See docs/SCRIPTS.md."""
import argparse

from ldm.inference import runner
from ldm.inference.parsers import build_parser as _build_parser


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("inpaint")


def main(argv=None) -> None:
    runner.main("inpaint", argv)


if __name__ == "__main__":
    main()
