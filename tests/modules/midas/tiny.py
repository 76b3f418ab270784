"""Toy sizes of the MiDaS networks for tests: the original structure with small widths and
depths (GroupNorm needs multiples of 32 channels in the hybrid's ResNet)."""
import torch

TINY_HYBRID = {"features": 32, "backbone_options": {
    "embed_dim": 64, "depth": 4, "num_heads": 2, "img_size": 64, "hooks": [0, 1, 2, 3],
    "stem_width": 32, "stage_widths": [128, 128, 256], "stage_depths": [1, 1, 2]}}
TINY_VIT = {"features": 32, "backbone_options": {
    "embed_dim": 64, "depth": 4, "num_heads": 2, "img_size": 64, "hooks": [0, 1, 2, 3],
    "features": [32, 32, 64, 64]}}
TINY_RESNEXT = {"features": 32, "backbone_options": {"layers": (1, 1, 2, 1), "groups": 4, "width_per_group": 4,
                                                     "width": 16}}


def perturbed(model: torch.nn.Module, scale: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """``model`` in eval mode with every float parameter and buffer moved by seeded noise, so that
    no output is trivially zero (biases start at 0, BatchNorm statistics at 0 and 1; variances
    only grow)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator) * scale
                tensor.add_(noise.abs() if name.endswith("running_var") else noise)
    return model.eval()
