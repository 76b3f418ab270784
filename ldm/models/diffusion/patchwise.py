"""Patch-wise denoising and decoding of large latents, the latent-diffusion models' answer to
inputs larger than they were trained on: with ``model.split_input_params`` set (as the original
super-resolution notebook sets it), ``apply_model`` runs the UNet on overlapping square patches of
the latent (and of an image-like conditioning), and ``decode_first_stage`` decodes overlapping
latent patches; the outputs are blended with weights that fall off towards each patch's border.
Mixed into ``LatentDiffusion``; method names and the parameters are the original's:

* ``ks``, ``stride``: patch size and step, in latent pixels (e.g. (128, 128), (64, 64));
* ``vqf``: the autoencoder's downsampling factor (decoded patches are ``vqf`` times larger);
* ``patch_distributed_vq``: decode in patches too;
* ``clip_min_weight``, ``clip_max_weight``: a pixel's weight is its normalised distance to the
  patch border (0 at the border, 0.5 in the centre) clipped to this range;
* ``tie_braker`` with ``clip_min_tie_weight``, ``clip_max_tie_weight``: also weigh whole patches
  by their distance to the border of the patch grid.

As in the original, patches must tile the latent exactly: each side must be ``ks`` plus a multiple
of ``stride`` (decoding shrinks ``ks`` and ``stride`` to the latent when it is smaller).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch

# Conditioning keys whose conditioning is an image of the latent's size, cut into the same patches.
IMAGE_LIKE_CONDITIONING_KEYS = ("image", "LR_image", "segmentation", "bbox_img")


class PatchwiseProcessing:
    """``split_input_params`` support of ``LatentDiffusion`` (see the module docstring)."""

    def meshgrid(self, h: int, w: int) -> torch.Tensor:
        """``[h, w, 2]``: the (row, column) index of every pixel."""
        rows = torch.arange(h).view(h, 1, 1).expand(h, w, 1)
        columns = torch.arange(w).view(1, w, 1).expand(h, w, 1)
        return torch.cat([rows, columns], dim=-1)

    def delta_border(self, h: int, w: int) -> torch.Tensor:
        """``[h, w]``: each pixel's distance to the nearest border, in fractions of the side
        (0 on the border, 0.5 in the centre)."""
        position = self.meshgrid(h, w) / torch.tensor([h - 1, w - 1]).view(1, 1, 2)
        to_top_left = position.min(dim=-1).values
        to_bottom_right = (1 - position).min(dim=-1).values
        return torch.minimum(to_top_left, to_bottom_right)

    def get_weighting(self, h: int, w: int, Ly: int, Lx: int, device) -> torch.Tensor:
        """``[1, h * w, Ly * Lx]``: the blending weight of each pixel of each of the ``Ly * Lx``
        patches of size ``h`` x ``w``."""
        params = self.split_input_params
        weighting = torch.clip(self.delta_border(h, w), params["clip_min_weight"], params["clip_max_weight"])
        weighting = weighting.view(1, h * w, 1).repeat(1, 1, Ly * Lx).to(device)
        if params["tie_braker"]:
            patch_weighting = torch.clip(self.delta_border(Ly, Lx), params["clip_min_tie_weight"],
                                         params["clip_max_tie_weight"])
            weighting = weighting * patch_weighting.view(1, 1, Ly * Lx).to(device)
        return weighting

    def get_fold_unfold(self, x: torch.Tensor, kernel_size: Tuple[int, int], stride: Tuple[int, int],
                        uf: int = 1, df: int = 1):
        """``(fold, unfold, normalization, weighting)`` for cutting ``x`` into ``kernel_size``
        patches every ``stride`` pixels and stitching outputs that are ``uf`` times larger (or
        ``df`` times smaller) than the patches back together: ``fold(weighting * outputs) /
        normalization`` is the weighted mean of the overlapping outputs at every pixel."""
        if uf > 1 and df > 1:
            raise NotImplementedError("get_fold_unfold: give uf or df, not both")
        _, _, h, w = x.shape
        patches_y = (h - kernel_size[0]) // stride[0] + 1
        patches_x = (w - kernel_size[1]) // stride[1] + 1
        unfold = torch.nn.Unfold(kernel_size=kernel_size, dilation=1, padding=0, stride=stride)

        def scaled(size: int) -> int:
            return size * uf if uf > 1 else size // df

        out_kernel = (scaled(kernel_size[0]), scaled(kernel_size[1]))
        fold = torch.nn.Fold(output_size=(scaled(h), scaled(w)), kernel_size=out_kernel, dilation=1, padding=0,
                             stride=(scaled(stride[0]), scaled(stride[1])))
        weighting = self.get_weighting(out_kernel[0], out_kernel[1], patches_y, patches_x, x.device).to(x.dtype)
        normalization = fold(weighting).view(1, 1, scaled(h), scaled(w))
        weighting = weighting.view(1, 1, out_kernel[0], out_kernel[1], patches_y * patches_x)
        return fold, unfold, normalization, weighting

    # -- the two patch-wise paths ---------------------------------------------------------------
    def _in_patches(self, fn: Callable[[int, torch.Tensor], torch.Tensor], x: torch.Tensor,
                    kernel_size: Tuple[int, int], stride: Tuple[int, int], uf: int = 1) -> torch.Tensor:
        """``fn(i, patch_i)`` on every patch of ``x``, stitched into the weighted mean."""
        _check_patches_tile(x.shape[-2:], kernel_size, stride)
        fold, unfold, normalization, weighting = self.get_fold_unfold(x, kernel_size, stride, uf=uf)
        patches = _cut(unfold, x, kernel_size)
        outputs = torch.stack([fn(i, patch) for i, patch in enumerate(patches)], dim=-1)
        outputs = outputs * weighting
        return fold(outputs.view(outputs.shape[0], -1, outputs.shape[-1])) / normalization

    def apply_model_in_patches(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Dict[str, list]) -> torch.Tensor:
        """The UNet on overlapping ``ks`` patches of ``x_noisy``, every ``stride`` latent pixels;
        an image-like conditioning is cut into the same patches, any other given whole to each."""
        if len(cond) != 1:
            raise NotImplementedError("split_input_params: patch-wise denoising takes one conditioning, got "
                                      f"{', '.join(cond)}")
        if self.cond_stage_key == "coordinates_bbox":
            raise NotImplementedError("split_input_params: patch-wise denoising of bounding-box conditioning")
        params = self.split_input_params
        kernel_size, stride = tuple(params["ks"]), tuple(params["stride"])
        key, values = next(iter(cond.items()))
        cut_condition = self.cond_stage_key in IMAGE_LIKE_CONDITIONING_KEYS and self.model.conditioning_key
        if cut_condition:
            if len(values) != 1:
                raise NotImplementedError("split_input_params: patch-wise denoising takes one conditioning tensor")
            _check_patches_tile(values[0].shape[-2:], kernel_size, stride)
            unfold = torch.nn.Unfold(kernel_size=kernel_size, dilation=1, padding=0, stride=stride)
            condition_patches = _cut(unfold, values[0], kernel_size)

        def denoise(index: int, patch: torch.Tensor) -> torch.Tensor:
            patch_cond = {key: [condition_patches[index]]} if cut_condition else cond
            output = self.model(patch, t, **patch_cond)
            if isinstance(output, tuple):
                raise NotImplementedError("split_input_params: a model with several outputs")
            return output

        return self._in_patches(denoise, x_noisy, kernel_size, stride)

    def decode_in_patches(self, z: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``decode`` (the first stage's, on unscaled latents) on overlapping latent patches, the
        images stitched; the patches shrink to the latent when it is smaller than ``ks``."""
        params = self.split_input_params
        h, w = z.shape[-2:]
        kernel_size = (min(params["ks"][0], h), min(params["ks"][1], w))
        stride = (min(params["stride"][0], h), min(params["stride"][1], w))
        return self._in_patches(lambda index, patch: decode(patch), z, kernel_size, stride, uf=params["vqf"])


def _cut(unfold: torch.nn.Unfold, x: torch.Tensor, kernel_size: Tuple[int, int]) -> List[torch.Tensor]:
    """The patches of ``x`` as ``[B, C, kh, kw]`` tensors, in ``unfold``'s (row-major) order."""
    columns = unfold(x)
    columns = columns.view(columns.shape[0], -1, kernel_size[0], kernel_size[1], columns.shape[-1])
    return [columns[..., i] for i in range(columns.shape[-1])]


def _check_patches_tile(size, kernel_size: Tuple[int, int], stride: Tuple[int, int]) -> None:
    """Refuse sizes the patches do not cover exactly (the original would divide by zero there)."""
    for side, kernel, step in zip(size, kernel_size, stride):
        if side < kernel or (side - kernel) % step:
            raise ValueError(f"split_input_params: a latent side of {side} is not covered by patches of {kernel} "
                             f"every {step}; it must be {kernel} plus a multiple of {step}")
