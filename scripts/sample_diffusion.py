"""Sample an unconditional model: ``python scripts/sample_diffusion.py -r <logdir or checkpoint> -n 50000``.

The CompVis script's flags and defaults (``-r -n -e -c --batch_size -l -v``), for pixel-space DDPMs
and unconditional latent diffusion models, plus ``--sampler``, ``--seed``, ``--config`` and
``--device``; writes ``<logdir>/samples/<step>/<time>/img/sample_NNNNNN.png`` and
``numpy/<N>x<H>x<W>x<C>-samples.npz`` (see README.md)."""
import argparse

from ldm.inference import logdir_sampling
from ldm.inference.parsers import build_parser as _build_parser


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("unconditional")


def main(argv=None) -> None:
    logdir_sampling.main(argv)


if __name__ == "__main__":
    main()
