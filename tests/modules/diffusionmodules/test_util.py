"""ldm/modules/diffusionmodules/util.py: schedules, DDIM grids and embeddings as the originals define them."""
import math

import numpy as np
import pytest
import torch

from ldm.modules.diffusionmodules.util import (checkpoint, extract_into_tensor, make_beta_schedule,
                                               make_ddim_sampling_parameters, make_ddim_timesteps,
                                               normalization, timestep_embedding)


def test_linear_schedule_is_linear_in_sqrt_beta():
    betas = make_beta_schedule("linear", 1000, 0.00085, 0.012)
    roots = [math.sqrt(0.00085) + i * (math.sqrt(0.012) - math.sqrt(0.00085)) / 999 for i in range(1000)]
    assert betas.dtype == np.float64
    assert np.allclose(betas, np.square(roots), rtol=1e-12, atol=0)


def test_sqrt_linear_and_sqrt_schedules():
    lin = [1e-4 + i * (2e-2 - 1e-4) / 99 for i in range(100)]
    assert np.allclose(make_beta_schedule("sqrt_linear", 100), lin, rtol=1e-12)
    assert np.allclose(make_beta_schedule("sqrt", 100), np.sqrt(lin), rtol=1e-12)


def test_cosine_schedule_follows_improved_ddpm_alpha_bar():
    s, n = 8e-3, 1000
    f = [math.cos((t / n + s) / (1 + s) * math.pi / 2) ** 2 for t in range(n + 1)]
    expected = [min(max(1 - f[t + 1] / f[t], 0.0), 0.999) for t in range(n)]
    assert np.allclose(make_beta_schedule("cosine", n, cosine_s=s), expected, rtol=1e-9, atol=1e-12)


def test_squaredcos_cap_v2_schedule():
    bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    expected = [min(1 - bar((i + 1) / 1000) / bar(i / 1000), 0.999) for i in range(1000)]
    assert np.allclose(make_beta_schedule("squaredcos_cap_v2", 1000), expected)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown beta schedule 'quadratic'"):
        make_beta_schedule("quadratic", 10)


def test_uniform_ddim_grid_is_shifted_by_one():
    steps = make_ddim_timesteps("uniform", 50, 1000, verbose=False)
    assert steps.tolist() == list(range(1, 1000, 20))


def test_uniform_ddim_grid_can_have_more_steps_than_asked_like_the_original():
    assert len(make_ddim_timesteps("uniform", 30, 1000, verbose=False)) == 31


def test_quad_ddim_grid():
    expected = (np.linspace(0, np.sqrt(800), 10) ** 2).astype(int) + 1
    assert make_ddim_timesteps("quad", 10, 1000, verbose=False).tolist() == expected.tolist()


def test_ddim_parameters_first_previous_alpha_is_alphacums_zero():
    alphacums = np.cumprod(1 - make_beta_schedule("linear", 1000))
    steps = make_ddim_timesteps("uniform", 10, 1000, verbose=False)
    sigmas, alphas, alphas_prev = make_ddim_sampling_parameters(alphacums, steps, eta=1.0, verbose=False)
    assert alphas_prev[0] == alphacums[0]
    assert np.allclose(alphas_prev[1:], alphacums[steps[:-1]])
    expected = np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    assert np.allclose(sigmas, expected)
    assert np.all(make_ddim_sampling_parameters(alphacums, steps, 0.0, verbose=False)[0] == 0)


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0.0, 10.0, 999.0])
    emb = timestep_embedding(t, 6)
    freqs = torch.tensor([10000 ** (-k / 3) for k in range(3)])
    args = t[:, None] * freqs[None]
    assert torch.allclose(emb, torch.cat([args.cos(), args.sin()], dim=1), atol=1e-5)
    assert timestep_embedding(t, 7).shape == (3, 7) and torch.all(timestep_embedding(t, 7)[:, -1] == 0)


def test_extract_into_tensor_gathers_and_broadcasts():
    a = torch.arange(10.0)
    out = extract_into_tensor(a, torch.tensor([3, 7]), (2, 4, 8, 8))
    assert out.shape == (2, 1, 1, 1) and out.flatten().tolist() == [3.0, 7.0]


def test_checkpoint_gives_the_same_gradients():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4, requires_grad=True)
    checkpoint(layer, (x,), layer.parameters(), True).sum().backward()
    grads = [x.grad.clone(), layer.weight.grad.clone()]
    x.grad = None
    layer.weight.grad = None
    checkpoint(layer, (x,), layer.parameters(), False).sum().backward()
    assert torch.allclose(grads[0], x.grad) and torch.allclose(grads[1], layer.weight.grad)


def test_normalization_is_32_groups_computed_in_float32():
    norm = normalization(64)
    assert norm.num_groups == 32 and norm.eps == 1e-5
    x = torch.randn(1, 64, 4, 4).half()
    assert norm(x).dtype == torch.float16


@pytest.mark.parametrize("steps", [3, 9, 300, 2000])
def test_ddim_grid_that_would_run_past_the_schedule_is_a_clear_error(steps):
    from ldm.modules.diffusionmodules.util import StepCountError
    with pytest.raises(StepCountError, match=f"--steps {steps}"):
        make_ddim_timesteps("uniform", steps, 1000, verbose=False)


def test_normalization_of_half_weights_matches_float32():
    norm = normalization(64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 64, 4, 4)
    reference = norm(x)
    half = normalization(64).to(torch.bfloat16)
    half.load_state_dict(norm.state_dict())
    out = half(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), reference, atol=0.05)
