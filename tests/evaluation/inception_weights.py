"""A random-weight FID Inception saved as pytorch-fid ships its weights (a plain state dict
without ``num_batches_tracked``), for tests that need ``--inception``."""
from pathlib import Path

import torch

from ldm.evaluation.inception import FIDInceptionV3


def save_random_fid_inception(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if name.endswith("conv.weight"):   # He-normal: activations stay of order one through 94 layers
                value.normal_(0.0, (2.0 / value[0].numel()) ** 0.5)
            elif name.endswith(("bn.bias", "running_mean", "fc.bias")):
                value.normal_(0.0, 0.1)
            elif name.endswith(("bn.weight", "running_var")):
                value.uniform_(0.5, 1.5)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    return path
