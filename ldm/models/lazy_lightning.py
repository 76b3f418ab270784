"""The base of the models that ``main.py`` trains (DDPM, LatentDiffusion and its task models, the
autoencoders): a plain ``nn.Module`` unless PyTorch Lightning is loaded, a
``pytorch_lightning.LightningModule`` when it is.

Why: importing Lightning costs about 3 s (it pulls torchmetrics and ``torch._dynamo``), more than
a small model takes to load and sample, and inference never trains. The originals subclass
``pl.LightningModule`` directly, so every script paid that cost.

How: each class here is written once, with the Lightning hooks (``training_step``,
``configure_optimizers`` ...) as ordinary methods. Constructing one while ``pytorch_lightning`` is
imported (``main.py`` and any training script import it first) returns an instance of
:func:`lightning_class` ``(cls)``, a subclass of both ``cls`` and ``pl.LightningModule`` made on
first use, with the same name; ``self.log``, ``self.trainer``, ``global_step`` and Lightning's
``isinstance`` checks then work as in the original. Without Lightning the instance is of ``cls``
itself and has the few attributes inference uses (``device``, ``dtype``). Either kind pickles and
copies under the original class path, and the state dict is the same.
"""
from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, Tuple, Type

import torch
import torch.nn as nn

# What the plain base provides itself and a LightningModule keeps as Lightning defines it.
LIGHTNING_OWNS: Tuple[str, ...] = ("device", "dtype", "load_from_checkpoint")


def lightning_loaded() -> bool:
    """Whether ``pytorch_lightning`` has been imported in this process."""
    return "pytorch_lightning" in sys.modules


class LazyLightningModule(nn.Module):
    """An ``nn.Module`` that is constructed as a ``pl.LightningModule`` whenever
    ``pytorch_lightning`` is imported (see the module docstring)."""

    def __new__(cls, *args: Any, **kwargs: Any):
        target = lightning_class(cls) if lightning_loaded() else cls
        return super().__new__(target)

    @property
    def device(self) -> torch.device:
        """The device of the first parameter or buffer (cpu for a module without either)."""
        tensor = next(self._tensors(), None)
        return torch.device("cpu") if tensor is None else tensor.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter or buffer (torch's default without one)."""
        tensor = next((t for t in self._tensors() if t.is_floating_point()), None)
        return torch.get_default_dtype() if tensor is None else tensor.dtype

    def _tensors(self):
        yield from self.parameters()
        yield from self.buffers()

    @classmethod
    def load_from_checkpoint(cls, *args: Any, **kwargs: Any):
        """Lightning's ``LightningModule.load_from_checkpoint`` (imports Lightning)."""
        import pytorch_lightning  # noqa: F401  (so that the model it builds is a LightningModule)

        return lightning_class(cls).load_from_checkpoint(*args, **kwargs)


def _empty_instance(plain_class: Type[nn.Module]) -> nn.Module:
    """An instance of ``plain_class`` as ``__new__`` makes it (a LightningModule where Lightning is
    loaded), for unpickling to fill in."""
    return plain_class.__new__(plain_class)


def _rebuild_as(plain_class: Type[nn.Module]):
    """``__reduce_ex__`` of a Lightning variant: pickle and copy it under ``plain_class``, the class
    its path names, which unpickles as a LightningModule where Lightning is loaded."""

    def __reduce_ex__(self, protocol):
        _, _, *rest = object.__reduce_ex__(self, max(protocol, 2))  # (__newobj__, (cls,), state, ...)
        return (_empty_instance, (plain_class,), *rest)

    return __reduce_ex__


@functools.lru_cache(maxsize=None)
def lightning_class(cls: Type[nn.Module]) -> type:
    """``cls`` as a ``pl.LightningModule``: ``cls`` itself when it already is one, else a subclass
    of ``cls`` and ``pl.LightningModule`` (in that order, so ``cls``'s hooks win) with ``cls``'s
    name, module and docstring. Imports Lightning."""
    import pytorch_lightning as pl

    if issubclass(cls, pl.LightningModule):
        return cls
    namespace = {name: inspect.getattr_static(pl.LightningModule, name) for name in LIGHTNING_OWNS}
    namespace.update(__module__=cls.__module__, __qualname__=cls.__qualname__, __doc__=cls.__doc__,
                     __reduce_ex__=_rebuild_as(cls))
    return type(cls.__name__, (cls, pl.LightningModule), namespace)
