import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from harness import *
from ldm.modules.attention import CrossAttention

class Maps:
    def __init__(self, unet):
        self.layers = [m for m in unet.modules() if isinstance(m, CrossAttention)]
        self.mode, self.store, self.kinds, self.cond_only = None, {}, set(), False
        self.self_ids = {id(m.attn1) for m in unet.modules() if hasattr(m, "attn1")}
        for layer in self.layers:
            layer.attend = self._wrap(layer, layer.attend)
    def _wrap(self, layer, original):
        def attend(q, k, v, mask=None, scale=None):
            kind = "self" if id(layer) in self.self_ids else "cross"
            if self.mode == "record":
                probs = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)
                self.store[id(layer)] = probs
                return probs @ v
            if self.mode == "inject" and kind in self.kinds:
                own = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)
                probs = self.store[id(layer)]
                if self.cond_only:
                    half = q.shape[0] // 2
                    probs = torch.cat([own[:half], probs[half:]])
                return probs @ v
            return original(q, k, v, mask=mask, scale=scale)
        return attend

M = Maps(model.model.diffusion_model)

def p2p(C, keep, scale, uc, kinds_steps, cond_only=False, steps=50):
    plan = inv.plan_edit(keep, steps, 50, model.num_timesteps)
    sampler.make_schedule(ddim_num_steps=steps, ddim_eta=0.0, verbose=False)
    levels = inv.blend_levels(plan, model.num_timesteps)
    x = C.traj.latents[plan.inversion_count]
    n = plan.regeneration_steps
    for done, index in enumerate(reversed(range(n))):
        t = torch.full((x.shape[0],), int(sampler.ddim_timesteps[index]), dtype=torch.long)
        active = {k for k, frac in kinds_steps.items() if done < round(frac * n)}
        if active:
            src_latent = C.traj.latents[index + 1] if index + 1 < len(C.traj.latents) else None
            src_latent = C.traj.latents[plan.inversion_count - done]
            M.mode = "record"
            sampler.model_output_and_eps(src_latent, t, C.src, scale, uc)
            M.mode, M.kinds, M.cond_only = "inject", active, cond_only
        x, _ = sampler.p_sample_ddim(x, C.tgt, t, index, unconditional_guidance_scale=scale, unconditional_conditioning=uc)
        M.mode = None
    return x

idx = [8,13,19,26,30,38,41,46, 0,5,10,15,20,25,33,44]
t0 = time.time()
C = Cases(idx); C.invert()
print(f"inverted in {time.time()-t0:.0f}s", flush=True)
for keep, kinds, cond_only in [(0.0, {"self": 0.5, "cross": 0.8}, False), (0.0, {"self": 0.5, "cross": 0.8}, True),
                               (0.0, {"self": 1.0, "cross": 1.0}, False), (0.2, {"self": 0.5, "cross": 0.8}, False)]:
    t0 = time.time()
    z = p2p(C, keep, 5.0, C.empty, kinds, cond_only)
    C.score(z, f"p2p keep {keep} {kinds} cond_only {cond_only} ({time.time()-t0:.0f}s)")
