"""PatchGAN discriminator of pix2pix (Isola et al. 2017), as taming-transformers builds it for
autoencoder training: parameter names ``main.<i>.*`` match the original checkpoints."""
from __future__ import annotations

import torch
from torch import nn


class ActNorm(nn.Module):
    """Per-channel affine normalisation whose scale and shift are set from the statistics of the
    first training batch (Glow, Kingma & Dhariwal 2018, section 3.1), then learned."""

    def __init__(self, num_features: int, logdet: bool = False, affine: bool = True,
                 allow_reverse_init: bool = False):
        if not affine:
            raise ValueError("ActNorm is always affine (affine=False is not supported)")
        super().__init__()
        self.logdet = logdet
        self.allow_reverse_init = allow_reverse_init
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Make this batch zero-mean and unit-std per channel."""
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean = per_channel.mean(1).view(1, -1, 1, 1)
        std = per_channel.std(1).view(1, -1, 1, 1)
        self.loc.data.copy_(-mean)
        self.scale.data.copy_(1.0 / (std + 1e-6))

    def _init_once(self, x: torch.Tensor) -> None:
        if self.training and self.initialized.item() == 0:
            self.initialize(x)
            self.initialized.fill_(1)

    def forward(self, x: torch.Tensor, reverse: bool = False):
        if reverse:
            return self.reverse(x)
        squeeze = x.dim() == 2
        if squeeze:
            x = x[:, :, None, None]
        self._init_once(x)
        h = self.scale * (x + self.loc)
        if squeeze:
            h = h.squeeze(-1).squeeze(-1)
        if self.logdet:
            height, width = x.shape[2], x.shape[3]
            logdet = height * width * torch.sum(torch.log(torch.abs(self.scale)))
            return h, logdet * torch.ones(x.shape[0]).to(x)
        return h

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.initialized.item() == 0:
            if not self.allow_reverse_init:
                raise RuntimeError("Initializing ActNorm in reverse direction is disabled; "
                                   "pass allow_reverse_init=True to enable it")
            self._init_once(y)
        squeeze = y.dim() == 2
        if squeeze:
            y = y[:, :, None, None]
        h = y / self.scale - self.loc
        return h.squeeze(-1).squeeze(-1) if squeeze else h


def weights_init(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al. 2016): conv weights ~ N(0, 0.02), batch-norm
    weights ~ N(1, 0.02) and biases 0. Used with ``discriminator.apply(weights_init)``."""
    name = module.__class__.__name__
    if "Conv" in name:
        nn.init.normal_(module.weight.data, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(module.weight.data, 1.0, 0.02)
        nn.init.constant_(module.bias.data, 0)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs, stride 2 for the first ``n_layers`` then stride 1, channels doubling
    from ``ndf`` up to 8*ndf, LeakyReLU(0.2); outputs one logit per patch. Convs followed by
    BatchNorm have no bias (ActNorm keeps it, as the original decides by the norm class)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False):
        super().__init__()
        norm_layer = ActNorm if use_actnorm else nn.BatchNorm2d
        use_bias = norm_layer is not nn.BatchNorm2d
        kernel, pad = 4, 1

        def block(in_mult: int, out_mult: int, stride: int) -> list:
            return [nn.Conv2d(ndf * in_mult, ndf * out_mult, kernel_size=kernel, stride=stride,
                              padding=pad, bias=use_bias),
                    norm_layer(ndf * out_mult),
                    nn.LeakyReLU(0.2, True)]

        layers = [nn.Conv2d(input_nc, ndf, kernel_size=kernel, stride=2, padding=pad), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            layers += block(mult, min(2 ** n, 8), stride=2)
            mult = min(2 ** n, 8)
        layers += block(mult, min(2 ** n_layers, 8), stride=1)
        mult = min(2 ** n_layers, 8)
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=kernel, stride=1, padding=pad))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
