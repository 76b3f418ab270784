import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
exec(open(__import__("os").path.join(__import__("os").path.dirname(__file__), "ef.py")).read().split("idx = [")[0])
def ef_regen_mask(C, xs, zs, keep, scale, uc, mask, steps=50):
    sampler.make_schedule(ddim_num_steps=steps, ddim_eta=1.0, verbose=False)
    grid = sampler.ddim_timesteps; N = len(grid); B = C.x0.shape[0]
    level = N - int(round(keep * N)); x = xs[level]
    for index in reversed(range(level)):
        t = torch.full((B,), int(grid[index]), dtype=torch.long)
        out, e_t = sampler.model_output_and_eps(x, t, C.tgt, scale, uc)
        coeff = sampler.step_coefficients(index, False, B, x.dtype)
        mu, _ = sampler.ddim_update(x, e_t, coeff, model.predict_start_from_z_and_v(x, t, out), temperature=0.0)
        x = mu + coeff[2] * zs[index]
        x = mask * x + (1 - mask) * xs[index]
    return x
idx = [8,13,19,26,30,38,41,46, 0,5,10,15,20,25,33,44]
t0 = time.time()
C = Cases(idx)
mask = inv.diffedit_mask(sampler, C.x0, C.src, C.tgt, 0.5, 0.5, 10, C.noise.generators)
xs, zs = ef_invert(C)
print(f"mask+ef inverted in {time.time()-t0:.0f}s; mask mean {float(mask.mean()):.3f}", flush=True)
for keep, dil in [(0.2, 1), (0.3, 1), (0.2, 0), (0.1, 1)]:
    t0 = time.time()
    z = ef_regen_mask(C, xs, zs, keep, 5.0, C.empty, inv.dilate_mask(mask, dil))
    C.score(z, f"ef+diffedit keep {keep} dilate {dil} ({time.time()-t0:.0f}s)")
