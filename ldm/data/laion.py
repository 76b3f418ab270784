"""LAION-style webdataset shards, under the class names the SD 2 configs give
(``ldm.data.laion.WebDataModuleFromConfig``, ``AddMask``; Stability AI never released this module).

A shard is a ``.tar`` of samples ``<key>.jpg`` + ``<key>.txt`` (+ ``<key>.json`` with
``original_width``, ``original_height``, ``pwatermark`` for the size and watermark filters). Each
split lists its shards (``shards``: strings or a list, brace ranges such as ``{00000..00099}.tar``,
local paths relative to ``tar_base`` or ``pipe:`` commands), ``shuffle`` (buffer size),
``image_key``, ``image_transforms`` (applied to the PIL image; torchvision's names map to
:mod:`ldm.data.transforms`), ``transforms`` (per other key: ``identity`` or a target) and
``postprocess`` (applied to each sample, e.g. :class:`AddMask`). Images arrive as HxWx3 float
tensors in [-1, 1], batches as dicts (``txt`` a list of strings).

The ``webdataset`` package is needed only here and is not a dependency of ldm: without it the data
module stops with one line saying so.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from ldm.data.base import DatasetError, PRNGMixin
from ldm.data.image_paths import DATA_DOC
from ldm.data.synthetic_mask import MASK_MODES, make_mask
from ldm.util import get_obj_from_str, instantiate_from_config

SHARD_LAYOUT = ("webdataset shards: .tar files of <key>.jpg + <key>.txt (+ <key>.json) samples, listed in "
                "data.params.<split>.shards relative to data.params.tar_base")


def import_webdataset():
    """The ``webdataset`` module, or a DatasetError saying what to install and what data it reads."""
    try:
        import webdataset
    except ImportError:
        raise DatasetError(f"ldm.data.laion.WebDataModuleFromConfig needs the webdataset package (pip install "
                           f"webdataset) and {SHARD_LAYOUT} (see {DATA_DOC})") from None
    return webdataset


def dict_collation_fn(samples: List[Dict[str, Any]], combine_tensors: bool = True,
                      combine_scalars: bool = True) -> Dict[str, Any]:
    """A batch of dict samples: the keys all samples share, tensors stacked, numbers and arrays
    made into arrays, anything else (text) a list."""
    keys = set.intersection(*(set(sample) for sample in samples))
    batch: Dict[str, Any] = {}
    for key in keys:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], (int, float)):
            if combine_scalars:
                batch[key] = np.array(values)
        elif isinstance(values[0], torch.Tensor):
            if combine_tensors:
                batch[key] = torch.stack(values)
        elif isinstance(values[0], np.ndarray):
            if combine_tensors:
                batch[key] = np.array(values)
        else:
            batch[key] = values
    return batch


def pil_to_hwc_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as an HxWx3 float32 tensor in [-1, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)


def _compose(functions, value):
    for function in functions:
        value = function(value)
    return value


def _identity(value):
    return value


def _partial_from_config(config) -> Any:
    return partial(get_obj_from_str(config["target"]), **(config.get("params") or {}))


class WebDataModuleFromConfig(pl.LightningDataModule):
    """Train / validation / test loaders over webdataset shards (see the module docstring).
    ``min_size`` drops images whose ``json`` gives a smaller original side, ``max_pwatermark``
    those more likely watermarked; ``p_unsafe_threshold`` and ``filter_word_list``, which the
    configs give, are accepted and unused, as in the original."""

    def __init__(self, tar_base: Optional[str], batch_size: int, train=None, validation=None, test=None,
                 num_workers: int = 4, multinode: bool = True, min_size: Optional[int] = None,
                 max_pwatermark: float = 1.0, **kwargs):
        super().__init__()
        self.wds = import_webdataset()
        self.tar_base = tar_base
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train, self.validation, self.test = train, validation, test
        self.multinode = multinode
        self.min_size = min_size
        self.max_pwatermark = max_pwatermark
        for name, split in (("train", train), ("validation", validation), ("test", test)):
            if split is not None:
                self.check_shards(name, split)

    def setup(self, stage: Optional[str] = None) -> None:
        """Nothing to build ahead: the shards are streamed by the loaders."""

    def shard_urls(self, split_config) -> List[str]:
        """Every shard of a split, brace ranges expanded; local ones under ``tar_base``."""
        specs = split_config.get("shards")
        specs = [specs] if isinstance(specs, str) else list(specs or [])
        urls = []
        for spec in specs:
            spec = str(spec).strip()
            local = not spec.startswith("pipe:") and "://" not in spec
            if local and self.tar_base:
                spec = os.path.join(str(self.tar_base), spec)
            urls.extend(self.wds.shardlists.expand_urls(spec))
        return urls

    def check_shards(self, name: str, split_config) -> None:
        """A split without shards, or whose first local shard is missing, is one line now."""
        urls = self.shard_urls(split_config)
        if not urls:
            raise DatasetError(f"data.params.{name}.shards lists no shards; expected {SHARD_LAYOUT}")
        first = urls[0]
        if not first.startswith("pipe:") and "://" not in first and not os.path.isfile(first):
            raise DatasetError(f"webdataset shard {first} not found (data.params.{name}); expected {SHARD_LAYOUT}")

    def _transforms(self, split_config) -> Dict[str, Any]:
        image_transforms = [instantiate_from_config(t) for t in split_config.get("image_transforms") or []]
        transforms = {key: _identity if value == "identity" else _partial_from_config(value)
                      for key, value in (split_config.get("transforms") or {}).items()}
        transforms[split_config.get("image_key", "jpeg")] = partial(_compose, image_transforms + [pil_to_hwc_tensor])
        return transforms

    def make_loader(self, split_config, train: bool = True):
        wds = self.wds
        image_key = split_config.get("image_key", "jpeg")
        shuffle = int(split_config.get("shuffle", 0) or 0)
        nodesplitter = wds.shardlists.split_by_node if self.multinode else wds.shardlists.single_node_only
        dataset = (wds.WebDataset(self.shard_urls(split_config), nodesplitter=nodesplitter, shardshuffle=shuffle > 0,
                                  handler=wds.warn_and_continue)
                   .repeat().shuffle(shuffle)
                   .select(partial(self.filter_keys, image_key=image_key))
                   .decode("pil", handler=wds.warn_and_continue)
                   .select(self.filter_size)
                   .map_dict(**self._transforms(split_config), handler=wds.warn_and_continue))
        if split_config.get("postprocess") is not None:
            dataset = dataset.map(instantiate_from_config(split_config["postprocess"]))
        dataset = dataset.batched(self.batch_size, partial=False, collation_fn=dict_collation_fn)
        return wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=self.num_workers)

    @staticmethod
    def filter_keys(sample: Dict[str, Any], image_key: str = "jpg") -> bool:
        return image_key in sample and "txt" in sample

    def filter_size(self, sample: Dict[str, Any]) -> bool:
        """Whether the sample's ``json`` meets ``min_size`` and ``max_pwatermark`` (a filter in
        force that the json does not answer drops the sample)."""
        meta = sample.get("json")
        try:
            if self.min_size is not None and self.min_size > 1 and (
                    meta["original_width"] < self.min_size or meta["original_height"] < self.min_size):
                return False
            if self.max_pwatermark is not None and self.max_pwatermark < 1.0 and \
                    meta["pwatermark"] > self.max_pwatermark:
                return False
        except (KeyError, TypeError):
            return False
        return True

    def train_dataloader(self):
        return self.make_loader(self.train)

    def val_dataloader(self):
        return self.make_loader(self.validation, train=False)

    def test_dataloader(self):
        return self.make_loader(self.test, train=False)


class AddMask(PRNGMixin):
    """Adds an inpainting mask to a sample whose ``jpg`` is an HxWx3 image in [-1, 1]: ``mask``
    (HxWx1, 1 = to be filled; a large LaMa mask of ``mode``, or with probability ``p_drop`` the
    whole image) and ``masked_image`` (``jpg`` where the mask is 0, else 0)."""

    def __init__(self, mode: str = "512train", p_drop: float = 0.0):
        super().__init__()
        if mode not in MASK_MODES:
            raise DatasetError(f"unknown mask generation mode {mode!r}; one of {', '.join(MASK_MODES)}")
        if not 0.0 <= p_drop <= 1.0:
            raise DatasetError(f"p_drop must be in [0, 1], got {p_drop}")
        self.mode = mode
        self.p_drop = p_drop

    def __call__(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        image = sample["jpg"]
        mask = make_mask(self.mode, self.prng, image.shape[0], image.shape[1])
        if self.prng.choice(2, p=[1 - self.p_drop, self.p_drop]):
            mask = np.ones_like(mask)
        mask = (mask > 0.5).astype(np.float32)[..., None]
        if isinstance(image, torch.Tensor):
            mask = torch.from_numpy(mask)
        sample["mask"] = mask
        sample["masked_image"] = image * (mask < 0.5)
        return sample
