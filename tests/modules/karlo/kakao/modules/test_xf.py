"""The prior transformer (ldm/modules/karlo/kakao/modules/xf.py) against an independent
implementation: diffusers' PriorTransformer (whose defaults are Karlo's prior), built at toy size
with random weights and given our tensors under its names. The renaming follows the facts of
diffusers' Karlo conversion: time_embed.0/2 -> time_embedding.linear_1/2, clip_img_proj -> proj_in,
text_emb_proj -> embedding_proj, text_enc_proj -> encoder_hidden_states_proj, prd_emb ->
prd_embedding, per block attn.c_qkv (packed per head as [q_h, k_h, v_h]) -> attn1.to_q/k/v,
attn.c_proj -> attn1.to_out.0, ln_1 -> norm1, ln_2 -> norm3, mlp.c_fc/c_proj -> ff.net.0.proj/ff.net.2,
final_ln -> norm_out, out_proj -> proj_to_clip_embeddings."""
import torch

from ldm.modules.karlo.kakao.modules.xf import PriorTransformer
from tests.modules.karlo.tiny import perturbed

WIDTH, HEADS, LAYERS, CLIP_DIM, TEXT_CTX = 64, 2, 2, 32, 77
RENAMES = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
           "clip_img_proj": "proj_in", "text_emb_proj": "embedding_proj", "text_enc_proj": "encoder_hidden_states_proj",
           "final_ln": "norm_out", "out_proj": "proj_to_clip_embeddings"}
BLOCK_RENAMES = {"attn.c_proj": "attn1.to_out.0", "ln_1": "norm1", "ln_2": "norm3", "mlp.c_fc": "ff.net.0.proj",
                 "mlp.c_proj": "ff.net.2"}


def to_diffusers(state_dict):
    out = {"positional_embedding": state_dict["positional_embedding"], "prd_embedding": state_dict["prd_emb"],
           "clip_mean": torch.zeros(1, CLIP_DIM), "clip_std": torch.ones(1, CLIP_DIM)}
    for key, value in state_dict.items():
        if "." not in key:
            continue  # the two embeddings above
        module, kind = key.rsplit(".", 1)
        if module in RENAMES:
            out[f"{RENAMES[module]}.{kind}"] = value
        elif module.startswith("transformer.resblocks."):
            index, part = module[len("transformer.resblocks."):].split(".", 1)
            prefix = f"transformer_blocks.{index}"
            if part == "attn.c_qkv":  # rows: head h holds [q_h, k_h, v_h], each WIDTH / HEADS rows
                per_head = value.reshape(HEADS, 3, WIDTH // HEADS, *value.shape[1:])
                for j, name in enumerate("qkv"):
                    out[f"{prefix}.attn1.to_{name}.{kind}"] = per_head[:, j].reshape(WIDTH, *value.shape[1:])
            else:
                out[f"{prefix}.{BLOCK_RENAMES[part]}.{kind}"] = value
    return out


def test_prior_transformer_equals_diffusers_prior_transformer():
    from diffusers import PriorTransformer as DiffusersPrior

    ours = perturbed(PriorTransformer(TEXT_CTX, WIDTH, LAYERS, HEADS, True, CLIP_DIM))
    theirs = DiffusersPrior(num_attention_heads=HEADS, attention_head_dim=WIDTH // HEADS, num_layers=LAYERS,
                            embedding_dim=CLIP_DIM, num_embeddings=TEXT_CTX, additional_embeddings=4).eval()
    theirs.load_state_dict(to_diffusers(ours.state_dict()), strict=True)

    generator = torch.Generator().manual_seed(0)
    x, text_emb = torch.randn(3, CLIP_DIM, generator=generator), torch.randn(3, CLIP_DIM, generator=generator)
    text_enc = torch.randn(3, TEXT_CTX, CLIP_DIM, generator=generator)
    timesteps = torch.tensor([0, 421, 999])
    mask = torch.zeros(3, TEXT_CTX, dtype=torch.bool)
    for row, length in enumerate((2, 9, TEXT_CTX)):
        mask[row, :length] = True
    causal = torch.full((TEXT_CTX + 4, TEXT_CTX + 4), float("-inf")).triu_(1)[None]
    with torch.no_grad():
        got = ours(x, timesteps, text_emb=text_emb, text_enc=text_enc, mask=mask, causal_mask=causal)
        expected = theirs(x, timesteps, proj_embedding=text_emb, encoder_hidden_states=text_enc,
                          attention_mask=mask).predicted_image_embedding
    assert got.shape == (3, CLIP_DIM)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.std() > 0.1


def test_padding_tokens_do_not_change_the_prediction():
    """What sits at masked (padding) text positions is never attended to."""
    model = perturbed(PriorTransformer(TEXT_CTX, WIDTH, LAYERS, HEADS, True, CLIP_DIM))
    generator = torch.Generator().manual_seed(1)
    x, text_emb = torch.randn(2, CLIP_DIM, generator=generator), torch.randn(2, CLIP_DIM, generator=generator)
    text_enc = torch.randn(2, TEXT_CTX, CLIP_DIM, generator=generator)
    mask = torch.zeros(2, TEXT_CTX, dtype=torch.bool)
    mask[:, :5] = True
    changed = text_enc.clone()
    changed[:, 5:] += 3.0
    causal = torch.full((TEXT_CTX + 4, TEXT_CTX + 4), float("-inf")).triu_(1)[None]
    t = torch.tensor([10, 500])
    with torch.no_grad():
        a = model(x, t, text_emb=text_emb, text_enc=text_enc, mask=mask, causal_mask=causal)
        b = model(x, t, text_emb=text_emb, text_enc=changed, mask=mask, causal_mask=causal)
        c = model(x, t, text_emb=text_emb, text_enc=changed, mask=torch.ones_like(mask), causal_mask=causal)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
