import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from harness import *
from ldm.models.diffusion.sampling_util import randn

def ef_invert(C, steps=50, scale=1.0, uc=None):
    sampler.make_schedule(ddim_num_steps=steps, ddim_eta=1.0, verbose=False)
    grid = sampler.ddim_timesteps; N = len(grid); x0 = C.x0; B = x0.shape[0]
    ab = model.alphas_cumprod[torch.as_tensor(grid)].to(x0)
    xs = [x0] + [ab[i].sqrt() * x0 + (1 - ab[i]).sqrt() * randn(x0.shape, C.noise.generators, device=x0.device, dtype=x0.dtype) for i in range(N)]
    zs = []
    for index in range(N):
        x = xs[index + 1]; t = torch.full((B,), int(grid[index]), dtype=torch.long)
        out, e_t = sampler.model_output_and_eps(x, t, C.src, scale, uc)
        coeff = sampler.step_coefficients(index, False, B, x.dtype)
        mu, _ = sampler.ddim_update(x, e_t, coeff, model.predict_start_from_z_and_v(x, t, out), temperature=0.0)
        zs.append((xs[index] - mu) / coeff[2])
    return xs, zs

def ef_regen(C, xs, zs, keep, scale, uc, steps=50, mask=None):
    """Regenerate from the inverted level; with ``mask``, the inverted source latent outside it at every step."""
    sampler.make_schedule(ddim_num_steps=steps, ddim_eta=1.0, verbose=False)
    grid = sampler.ddim_timesteps; N = len(grid); B = C.x0.shape[0]
    level = N - int(round(keep * N)); x = xs[level]
    for index in reversed(range(level)):
        t = torch.full((B,), int(grid[index]), dtype=torch.long)
        out, e_t = sampler.model_output_and_eps(x, t, C.tgt, scale, uc)
        coeff = sampler.step_coefficients(index, False, B, x.dtype)
        mu, _ = sampler.ddim_update(x, e_t, coeff, model.predict_start_from_z_and_v(x, t, out), temperature=0.0)
        x = mu + coeff[2] * zs[index]
        if mask is not None:
            x = mask * x + (1 - mask) * xs[index]
    return x

if __name__ == "__main__":
    idx = [8,13,19,26,30,38,41,46, 0,5,10,15,20,25,33,44]
    t0 = time.time()
    C = Cases(idx)
    xs, zs = ef_invert(C)
    print(f"ef inverted in {time.time()-t0:.0f}s", flush=True)
    # sanity: same prompt, scale 1 reconstructs
    z = ef_regen(C, xs, zs, 0.0, 1.0, None); C.tgt, saved = C.src, C.tgt
    z = ef_regen(C, xs, zs, 0.0, 1.0, None); C.tgt = saved
    print("recon rel err", float((z - C.x0).norm() / C.x0.norm()), flush=True)
    for keep, scale in [(0.4, 5.0), (0.2, 5.0), (0.4, 10.0), (0.0, 5.0), (0.6, 5.0)]:
        t0 = time.time()
        z = ef_regen(C, xs, zs, keep, scale, C.empty)
        C.score(z, f"ef keep {keep} scale {scale} ({time.time()-t0:.0f}s)")
