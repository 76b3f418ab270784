"""ldm/modules/x_transformer.py: the key layout of LDM text-to-image checkpoints (BERTEmbedder of
txt2img-1p4B-eval.yaml) and the maths of its pre-norm encoder against explicit formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from ldm.modules.encoders.modules import BERTEmbedder
from ldm.modules.x_transformer import Decoder, Encoder, TransformerWrapper


def expected_bert_embedder_layout(n_embed, n_layer, vocab=30522, seq=77, inner=512):
    """The LDM BERTEmbedder's keys: x_transformer's TransformerWrapper with 8 heads of 64 channels."""
    keys = [("transformer.token_emb.weight", (vocab, n_embed)), ("transformer.pos_emb.emb.weight", (seq, n_embed))]
    for i in range(n_layer):
        a, f = f"transformer.attn_layers.layers.{2 * i}.", f"transformer.attn_layers.layers.{2 * i + 1}."
        keys += [(a + "0.weight", (n_embed,)), (a + "0.bias", (n_embed,)),
                 (a + "1.to_q.weight", (inner, n_embed)), (a + "1.to_k.weight", (inner, n_embed)),
                 (a + "1.to_v.weight", (inner, n_embed)), (a + "1.to_out.weight", (n_embed, inner)),
                 (a + "1.to_out.bias", (n_embed,)),
                 (f + "0.weight", (n_embed,)), (f + "0.bias", (n_embed,)),
                 (f + "1.net.0.0.weight", (4 * n_embed, n_embed)), (f + "1.net.0.0.bias", (4 * n_embed,)),
                 (f + "1.net.2.weight", (n_embed, 4 * n_embed)), (f + "1.net.2.bias", (n_embed,))]
    keys += [("transformer.norm.weight", (n_embed,)), ("transformer.norm.bias", (n_embed,)),
             ("transformer.to_logits.weight", (vocab, n_embed)), ("transformer.to_logits.bias", (vocab,))]
    return keys


def test_ldm_txt2img_bert_embedder_has_the_checkpoint_layout():
    with torch.device("meta"):
        embedder = BERTEmbedder(n_embed=1280, n_layer=32)
    layout = [(k, tuple(v.shape)) for k, v in embedder.state_dict().items()]
    assert layout == expected_bert_embedder_layout(1280, 32)


def _perturbed_encoder(dim=32, depth=2, **kwargs):
    torch.manual_seed(0)
    wrapper = TransformerWrapper(num_tokens=20, max_seq_len=12, attn_layers=Encoder(dim=dim, depth=depth, **kwargs))
    with torch.no_grad():
        for p in wrapper.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return wrapper.eval()


def reference_embeddings(sd, tokens, depth, heads=8, key_mask=None):
    """Pre-norm encoder written out: x += Attn(LN(x)); x += FF(LN(x)); final LN."""
    x = F.embedding(tokens, sd["token_emb.weight"]) + sd["pos_emb.emb.weight"][:tokens.shape[1]]
    for i in range(depth):
        a, f = f"attn_layers.layers.{2 * i}.", f"attn_layers.layers.{2 * i + 1}."
        h = F.layer_norm(x, x.shape[-1:], sd[a + "0.weight"], sd[a + "0.bias"])
        q, k, v = (F.linear(h, sd[a + f"1.to_{n}.weight"]).unflatten(-1, (heads, -1)).transpose(1, 2)
                   for n in "qkv")
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if key_mask is not None:
            allowed = key_mask[:, None, :, None] & key_mask[:, None, None, :]
            scores = scores.masked_fill(~allowed, -torch.finfo(scores.dtype).max)
        out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + F.linear(out, sd[a + "1.to_out.weight"], sd[a + "1.to_out.bias"])
        h = F.layer_norm(x, x.shape[-1:], sd[f + "0.weight"], sd[f + "0.bias"])
        h = F.linear(F.gelu(F.linear(h, sd[f + "1.net.0.0.weight"], sd[f + "1.net.0.0.bias"])),
                     sd[f + "1.net.2.weight"], sd[f + "1.net.2.bias"])
        x = x + h
    return F.layer_norm(x, x.shape[-1:], sd["norm.weight"], sd["norm.bias"])


def test_encoder_embeddings_equal_explicit_formulas():
    wrapper = _perturbed_encoder()
    tokens = torch.randint(0, 20, (3, 12))
    with torch.no_grad():
        got = wrapper(tokens, return_embeddings=True)
        torch.testing.assert_close(got, reference_embeddings(wrapper.state_dict(), tokens, depth=2))
        torch.testing.assert_close(wrapper(tokens), F.linear(got, wrapper.to_logits.weight, wrapper.to_logits.bias))


def test_padding_mask_matches_explicit_masked_scores_and_hides_padded_keys():
    wrapper = _perturbed_encoder()
    tokens = torch.randint(0, 20, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        got = wrapper(tokens, return_embeddings=True, mask=mask)
        torch.testing.assert_close(got, reference_embeddings(wrapper.state_dict(), tokens, depth=2, key_mask=mask))
        shorter = wrapper(tokens[1:, :7], return_embeddings=True)
        torch.testing.assert_close(got[1:, :7], shorter, rtol=1e-5, atol=1e-5)


def test_decoder_positions_do_not_see_later_tokens():
    torch.manual_seed(0)
    wrapper = TransformerWrapper(num_tokens=20, max_seq_len=12, attn_layers=Decoder(dim=32, depth=2)).eval()
    tokens = torch.randint(0, 20, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 20
    with torch.no_grad():
        a, b = wrapper(tokens, return_embeddings=True), wrapper(changed, return_embeddings=True)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_cross_attention_layers_read_the_context():
    torch.manual_seed(0)
    layers = Encoder(dim=32, depth=1, cross_attend=True)
    assert layers.layer_types == ("a", "c", "f")
    x, context = torch.randn(2, 5, 32), torch.randn(2, 3, 32)
    assert not torch.allclose(layers(x, context=context), layers(x, context=torch.randn(2, 3, 32)))


def test_unsupported_options_raise_instead_of_being_ignored():
    with pytest.raises(TypeError, match="not supported here: rel_pos_bias"):
        Encoder(dim=32, depth=1, rel_pos_bias=True)
    with pytest.raises(TypeError, match="cannot be causal"):
        Encoder(dim=32, depth=1, causal=True)
