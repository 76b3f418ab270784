import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
exec(open(__import__("os").path.join(__import__("os").path.dirname(__file__), "p2p.py")).read().split("idx = [")[0])
unet = model.model.diffusion_model
class Feats:
    def __init__(self, blocks):
        self.mode, self.store = None, {}
        for b in blocks:
            b[0].register_forward_hook(self.hook)
    def hook(self, module, inp, out):
        if self.mode == "record": self.store[id(module)] = out
        elif self.mode == "inject": return self.store[id(module)]
F = None
def pnp(C, keep, scale, uc, feat_frac, attn_frac, src_uc, steps=50):
    plan = inv.plan_edit(keep, steps, 50, model.num_timesteps)
    sampler.make_schedule(ddim_num_steps=steps, ddim_eta=0.0, verbose=False)
    x = C.traj.latents[plan.inversion_count]; n = plan.regeneration_steps
    for done, index in enumerate(reversed(range(n))):
        t = torch.full((x.shape[0],), int(sampler.ddim_timesteps[index]), dtype=torch.long)
        f_on, a_on = done < round(feat_frac * n), done < round(attn_frac * n)
        if f_on or a_on:
            src_latent = C.traj.latents[plan.inversion_count - done]
            M.mode = "record"; F.mode = "record"
            sampler.model_output_and_eps(src_latent, t, C.src, scale, src_uc)
            M.mode = "inject" if a_on else None; M.kinds = {"self"}; M.cond_only = False
            F.mode = "inject" if f_on else None
        x, _ = sampler.p_sample_ddim(x, C.tgt, t, index, unconditional_guidance_scale=scale, unconditional_conditioning=uc)
        M.mode = None; F.mode = None
    return x
idx = [8,13,19,26,30,38,41,46, 0,5,10,15,20,25,33,44]
t0 = time.time(); C = Cases(idx); C.invert(); print(f"inverted in {time.time()-t0:.0f}s", flush=True)
for blocks, keep, ff, af in [((3,), 0.0, 0.8, 0.5), ((1,), 0.0, 0.8, 0.5), ((3,), 0.2, 0.8, 0.5), ((2, 3), 0.0, 1.0, 0.0)]:
    F = Feats([unet.output_blocks[i] for i in blocks])
    t0 = time.time(); z = pnp(C, keep, 5.0, C.empty, ff, af, C.empty)
    C.score(z, f"pnp blocks {blocks} keep {keep} feat {ff} selfattn {af} ({time.time()-t0:.0f}s)")
    for b in blocks: unet.output_blocks[b][0]._forward_hooks.clear()
