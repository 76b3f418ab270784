"""PatchGAN discriminator: original layout, patch output size, ActNorm and DCGAN init."""
import torch
from torch import nn

from ldm.modules.losses.discriminator import ActNorm, NLayerDiscriminator, weights_init


def test_default_discriminator_has_the_taming_layout():
    disc = NLayerDiscriminator()
    shapes = {k: tuple(v.shape) for k, v in disc.state_dict().items()}
    # conv (bias) / conv (no bias) + BatchNorm x3 / conv (bias), indices as in taming's Sequential
    assert shapes["main.0.weight"] == (64, 3, 4, 4) and shapes["main.0.bias"] == (64,)
    assert shapes["main.2.weight"] == (128, 64, 4, 4) and "main.2.bias" not in shapes
    assert shapes["main.3.running_mean"] == (128,)
    assert shapes["main.5.weight"] == (256, 128, 4, 4)
    assert shapes["main.8.weight"] == (512, 256, 4, 4)
    assert shapes["main.9.weight"] == (512,)
    assert shapes["main.11.weight"] == (1, 512, 4, 4) and shapes["main.11.bias"] == (1,)
    # 3*64*16+64 + 64*128*16 + 2*128 + 128*256*16 + 2*256 + 256*512*16 + 2*512 + 512*16+1
    assert sum(p.numel() for p in disc.parameters()) == 2_765_633


def test_discriminator_gives_30x30_patch_logits_for_256px_images():
    disc = NLayerDiscriminator(n_layers=3, ndf=8)
    assert disc(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_two_layer_discriminator_strides_twice_then_once():
    disc = NLayerDiscriminator(n_layers=2, ndf=8)
    strides = [m.stride[0] for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert strides == [2, 2, 1, 1]
    assert disc(torch.randn(2, 3, 16, 16)).shape == (2, 1, 2, 2)


def test_actnorm_discriminator_keeps_conv_biases_and_uses_actnorm():
    disc = NLayerDiscriminator(ndf=8, use_actnorm=True)
    assert isinstance(disc.main[3], ActNorm)
    assert disc.main[2].bias is not None


def test_actnorm_normalises_its_first_training_batch_then_stays_fixed():
    norm = ActNorm(4).train()
    x = torch.randn(8, 4, 5, 5) * 3 + 2
    y = norm(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3)
    assert norm.initialized.item() == 1
    loc = norm.loc.detach().clone()
    norm(torch.randn(8, 4, 5, 5))
    assert torch.equal(norm.loc.detach(), loc)
    assert torch.allclose(norm.reverse(y), x, atol=1e-4)


def test_weights_init_draws_conv_weights_with_std_002_and_batchnorm_around_1():
    torch.manual_seed(0)
    disc = NLayerDiscriminator().apply(weights_init)
    assert abs(disc.main[8].weight.std().item() - 0.02) < 0.001
    assert abs(disc.main[9].weight.mean().item() - 1.0) < 0.01
    assert torch.all(disc.main[9].bias == 0)
