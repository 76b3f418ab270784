"""Train latent-diffusion models from YAML configs with Lightning 2 (the original main.py CLI).

    python main.py --base configs/examples/tiny-autoencoder-kl.yaml -t --accelerator cpu --max_steps 10

The classes below are importable as ``main.<Class>`` because the original configs name them so;
the logic lives in :mod:`ldm.training`. They are imported on first use, so that a mistake on the
command line is reported before Lightning is loaded.
"""
import importlib
import sys

from ldm.training.run import main

_EXPORTS = {
    "CUDACallback": "ldm.training.callbacks",
    "ImageLogger": "ldm.training.callbacks",
    "SetupCallback": "ldm.training.callbacks",
    "DataModuleFromConfig": "ldm.training.datamodule",
    "WrappedDataset": "ldm.training.datamodule",
    "worker_init_fn": "ldm.training.datamodule",
    "get_parser": "ldm.training.cli",
    "str2bool": "ldm.training.cli",
    "Txt2ImgIterableBaseDataset": "ldm.data.base",
    "LearningRateMonitor": "pytorch_lightning.callbacks",
}
__all__ = ["main"] + sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'main' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
