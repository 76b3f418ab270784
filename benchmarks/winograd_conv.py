"""Winograd convolution for the UNet's 3x3 convolutions on CPU: an experiment, kept because it is a
negative result worth repeating (docs/PERFORMANCE.md, "Winograd convolutions").

A 3x3 convolution producing an m x m output tile from an (m+2) x (m+2) input tile needs 9 m^2
multiplications per channel pair when computed directly; Winograd's minimal filtering algorithm
F(m x m, 3 x 3) needs (m+2)^2 (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
Networks", eq. 8):

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A

Summed over input channels, the elementwise products become (m+2)^2 independent matrix products,
(tiles x C_in) @ (C_in x C_out), so the work stays in BLAS. F(4x4, 3x3) does 4x fewer
multiplications than the direct convolution (F(2x2, 3x3): 2.25x fewer), at a larger rounding error
(about 1e-5 of the output's magnitude in float32 against 3e-7 direct) and with transformed weights
4x (16/9x) the size of the originals, which must be made on every call or kept in memory.

    OMP_NUM_THREADS=1 python benchmarks/winograd_conv.py            # single convolutions
    OMP_NUM_THREADS=1 python benchmarks/winograd_conv.py --unet 64  # the SD 1.x UNet, batch 2
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import median_seconds  # noqa: E402

# Transform matrices (B^T, G, A^T) of Lavin & Gray (2016), section 4.1 (F(2x2, 3x3)) and
# section 4.2 (F(4x4, 3x3), interpolation points 0, +-1, +-2 and infinity).
_TRANSFORMS = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}
TILE_SIZES = tuple(_TRANSFORMS)


def _two_dimensional_transforms(tile: int, dtype: torch.dtype, device: torch.device):
    """B^T ⊗ B^T, G ⊗ G and A^T ⊗ A^T: the 2-D transforms as single matrices acting on
    row-major flattened tiles (vec(M^T X M) = (M^T ⊗ M^T) vec(X))."""
    bt, g, at = (torch.tensor(matrix, dtype=torch.float64) for matrix in _TRANSFORMS[tile])
    return tuple(torch.kron(m, m).to(dtype=dtype, device=device) for m in (bt, g, at))


def transform_weight(weight: torch.Tensor, tile: int = 4) -> torch.Tensor:
    """G g G^T for every (out, in) channel pair: shape ((tile+2)^2, C_out, C_in)."""
    _, g2, _ = _two_dimensional_transforms(tile, weight.dtype, weight.device)
    out_channels, in_channels = weight.shape[:2]
    flat = weight.reshape(out_channels * in_channels, 9)
    return (g2 @ flat.T).view(-1, out_channels, in_channels)


def winograd_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    tile: int = 4) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 ``weight``, computed as F(tile x tile,
    3 x 3). Any height and width: the input is zero-padded to whole tiles and the output cropped."""
    if tile not in _TRANSFORMS:
        raise ValueError(f"tile must be one of {TILE_SIZES}, got {tile}")
    if weight.shape[2:] != (3, 3) or x.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"need a (N, C, H, W) input and a (K, C, 3, 3) weight, got {tuple(x.shape)} "
                         f"and {tuple(weight.shape)}")
    batch, in_channels, height, width = x.shape
    out_channels = weight.shape[0]
    span = tile + 2
    rows, cols = -(-height // tile), -(-width // tile)
    b2, _, a2 = _two_dimensional_transforms(tile, x.dtype, x.device)

    padded = F.pad(x, (1, 1 + cols * tile - width, 1, 1 + rows * tile - height))
    tiles = padded.unfold(2, span, tile).unfold(3, span, tile)  # N, C, rows, cols, span, span
    n_tiles = batch * rows * cols
    data = tiles.permute(4, 5, 0, 2, 3, 1).reshape(span * span, n_tiles * in_channels)
    data = (b2 @ data).view(span * span, n_tiles, in_channels)  # B^T d B
    products = torch.bmm(data, transform_weight(weight, tile).transpose(1, 2))  # summed over C_in
    out = (a2 @ products.view(span * span, n_tiles * out_channels))  # A^T M A
    out = out.view(tile, tile, batch, rows, cols, out_channels).permute(2, 5, 3, 0, 4, 1)
    out = out.reshape(batch, out_channels, rows * tile, cols * tile)
    if rows * tile != height or cols * tile != width:
        out = out[:, :, :height, :width].contiguous()
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


CONV_SHAPES = [  # (C_in, C_out, side): the SD 1.x UNet's 3x3 convolutions at latent 64
    (320, 320, 64), (640, 320, 64), (640, 640, 64), (640, 640, 32), (1280, 640, 32),
    (1280, 1280, 32), (1280, 1280, 16), (1280, 1280, 8)]


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return ((y.double() - reference).abs().max() / reference.abs().max()).item()


def bench_convolutions(batch: int, repeats: int) -> None:
    print(f"batch {batch}; ms per call (weight transform included) and max |error| / max |y| against float64")
    for in_channels, out_channels, side in CONV_SHAPES:
        x = torch.randn(batch, in_channels, side, side)
        weight = torch.randn(out_channels, in_channels, 3, 3) / math.sqrt(9 * in_channels)
        bias = torch.randn(out_channels) * 0.1
        reference = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
        direct = median_seconds(lambda: F.conv2d(x, weight, bias, padding=1), repeats)
        row = (f"C_in {in_channels:4} C_out {out_channels:4} side {side:3}: direct {direct * 1e3:7.1f} ms "
               f"err {relative_error(F.conv2d(x, weight, bias, padding=1), reference):.1e}")
        for tile in TILE_SIZES:
            seconds = median_seconds(lambda: winograd_conv2d(x, weight, bias, tile), repeats)
            error = relative_error(winograd_conv2d(x, weight, bias, tile), reference)
            row += f" | F({tile}x{tile}) {seconds * 1e3:7.1f} ms ({direct / seconds:4.2f}x) err {error:.1e}"
        print(row, flush=True)


def use_winograd(model: nn.Module, min_side: int, tile: int) -> int:
    """Compute the eligible 3x3 convolutions of ``model`` on inputs at least ``min_side`` pixels a
    side with ``winograd_conv2d`` (an instance-level forward: this script's experiment only)."""
    count = 0
    for conv in model.modules():
        if (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1):
            def forward(x, conv=conv):
                if min(x.shape[-2:]) >= min_side:
                    return winograd_conv2d(x, conv.weight, conv.bias, tile)
                return F.conv2d(x, conv.weight, conv.bias, padding=1)
            conv.forward = forward
            count += 1
    return count


def bench_unet(latent: int, repeats: int, min_side: int, tile: int) -> None:
    from omegaconf import OmegaConf

    from benchmarks.common import CONFIGS, alternate, median_times, perturb_zero_parameters
    from ldm.util import instantiate_from_config

    torch.manual_seed(0)
    plain = instantiate_from_config(OmegaConf.load(CONFIGS["sd1"]).model.params.unet_config).eval()
    perturb_zero_parameters(plain)
    fast = instantiate_from_config(OmegaConf.load(CONFIGS["sd1"]).model.params.unet_config).eval()
    fast.load_state_dict(plain.state_dict())
    count = use_winograd(fast, min_side, tile)
    x, t, context = torch.randn(2, 4, latent, latent), torch.tensor([500, 500]), torch.randn(2, 77, 768)
    with torch.inference_mode():
        a, b = plain(x, t, context=context), fast(x, t, context=context)
        times = alternate({"direct": lambda: plain(x, t, context=context),
                           "winograd": lambda: fast(x, t, context=context)}, repeats, torch.device("cpu"))
    direct, winograd = median_times(times["direct"])[0], median_times(times["winograd"])[0]
    print(f"SD 1.x UNet, latent {latent}, batch 2: {count} 3x3 convolutions as F({tile}x{tile}) from side {min_side}; "
          f"direct {direct:.3f} s, Winograd {winograd:.3f} s, ratio {winograd / direct:.3f}; "
          f"max |diff| {(a - b).abs().max().item():.2e} of max |y| {a.abs().max().item():.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--unet", type=int, metavar="LATENT", default=None,
                        help="time the SD 1.x UNet at this latent side instead of single convolutions")
    parser.add_argument("--min-side", type=int, default=32, help="Winograd on inputs at least this wide")
    parser.add_argument("--tile", type=int, choices=TILE_SIZES, default=4)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.unet:
        bench_unet(args.unet, args.repeats, args.min_side, args.tile)
    else:
        bench_convolutions(args.batch, args.repeats)


if __name__ == "__main__":
    main()
