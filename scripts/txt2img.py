"""Text to image: ``python scripts/txt2img.py --prompt "..." --config <yaml> --ckpt <file>``.

Flags and defaults are those of the Stability-AI script (SD 2.x), with the CompVis spellings
``--ddim_steps`` and ``--dpm_solver`` accepted; see docs/SCRIPTS.md."""
import argparse

from ldm.inference import runner
from ldm.inference.parsers import build_parser as _build_parser


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("txt2img")


def main(argv=None) -> None:
    runner.main("txt2img", argv)


if __name__ == "__main__":
    main()
