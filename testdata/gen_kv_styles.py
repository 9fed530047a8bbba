#!/usr/bin/env python3
"""Plain exports (no past_key_values) in five attention styles, written the way HuggingFace
transformers writes them, and PyTorch's greedy tokens for them: the fixtures of the derived
KV cache (pipeline/kvderive.go, onnx/kvcache.go).

    /usr/bin/python3 testdata/gen_kv_styles.py

Writes testdata/models/kvstyle_<style>.onnx (torch.onnx.export, TorchScript exporter, opset
17, float32, constant folding on, dynamic batch and sequence axes; inputs input_ids and
attention_mask int64 [batch, sequence], plus position_ids where the style takes it; output
logits [batch, sequence, vocab]) and testdata/expected/kv_styles.json.

Styles (transformers' code paraphrased, tiny sizes: vocab 128, width 32, 2 layers, 4 heads
of 8; seeded weights):

* llama_bool    Llama as transformers >= 4.48 writes it: cache_position = arange(past, past+q),
                a boolean [b,1,q,k] mask from create_causal_mask's causal and padding functions
                (kv index <= cache_position, attention_mask[kv index]) applied with
                torch.where(mask, scores, finfo.min); GQA (2 KV heads, repeat_kv with
                expand+reshape); rotary from position_ids (LlamaRotaryEmbedding's matmul form).
* llama_additive Llama as transformers 4.36 writes it: _prepare_4d_causal_attention_mask
                (AttentionMaskConverter.to_4d: _make_causal_mask filled with finfo.min,
                _expand_mask, masked_fill) added to the scores; rotary from cos/sin tables sliced
                to the key length and gathered by position_ids; 4 KV heads (no repeat).
* gpt2          GPT-2 as transformers 4.36 writes it: Conv1D (addmm) fused c_attn split into
                q, k, v; the `bias` buffer sliced [k-q:k, :k] and applied with torch.where; the
                additive (1 - attention_mask) * finfo.min; positions arange(past, past+q) in the
                graph (no position_ids input); tied lm_head.
* trilu         a fused qkv projection split by slicing (Phi-3/Falcon style), a causal
                torch.triu(full(-inf), 1) mask (exported as Trilu) added to the scores, padding
                applied with masked_fill(finfo.min), rotary computed in the graph from
                arange(q) (no position_ids input).
* fixed_reshape Llama as transformers 4.36 writes its heads (q_len from hidden_states.size()),
                but with the head repeat written as one reshape to the fixed 4-D shape
                (bsz, num_heads, q_len, head_dim) and the attention output reshaped to
                (bsz, q_len, hidden): with a past the keys are longer than q_len.

expected/kv_styles.json: {"max_new_tokens", "prompts", "models": {style: {"file",
"inputs", "greedy": [{"ids", "min_gap"}]}}}: greedy decoding of all prompts in ONE batch,
left-padded (pad id 0, attention_mask 0 there), position_ids cumsum(mask) - 1 with 1 at padding
(as transformers' generate), the whole sequence re-run each step (no cache), argmax with
torch.argmax's first-index rule; min_gap is the smallest gap between the two best logits over
the row's steps (a test can tell a mismatch from a float near-tie). The script asserts that
every prompt decoded alone gives the same tokens.
"""
import json
import math
import os
import sys

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tinymodels as tm  # noqa: E402

VOCAB, WIDTH, LAYERS, HEADS, HEAD_DIM, FFN, MAX_POS = 128, 32, 2, 4, 8, 64, 64
MAX_NEW = 12
PROMPT_LENS = [5, 1, 9, 3, 7]
SEEDS = {"llama_bool": 11, "llama_additive": 12, "gpt2": 14, "trilu": 14, "fixed_reshape": 15}
MIN = torch.finfo(torch.float32).min


def prompts():
    return [[(i * 37 + t * 11 + 3) % (VOCAB - 1) + 1 for t in range(n)] for i, n in enumerate(PROMPT_LENS)]


class RMSNorm(nn.Module):
    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj = nn.Linear(WIDTH, FFN, bias=False)
        self.up_proj = nn.Linear(WIDTH, FFN, bias=False)
        self.down_proj = nn.Linear(FFN, WIDTH, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def inv_freq():
    return 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.int64).float() / HEAD_DIM))


# ------------------------------------------------------------------ llama_bool (transformers >= 4.48)
class BoolAttention(nn.Module):
    def __init__(self, kv_heads):
        super().__init__()
        self.head_dim = HEAD_DIM
        self.num_key_value_groups = HEADS // kv_heads
        self.scaling = HEAD_DIM ** -0.5
        self.q_proj = nn.Linear(WIDTH, HEADS * HEAD_DIM, bias=False)
        self.k_proj = nn.Linear(WIDTH, kv_heads * HEAD_DIM, bias=False)
        self.v_proj = nn.Linear(WIDTH, kv_heads * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, WIDTH, bias=False)

    def forward(self, hidden_states, position_embeddings, attention_mask):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        query_states = (query_states * cos) + (rotate_half(query_states) * sin)
        key_states = (key_states * cos) + (rotate_half(key_states) * sin)
        # eager_attention_forward with a boolean mask
        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) * self.scaling
        causal_mask = attention_mask[:, :, :, : key_states.shape[-2]]
        attn_weights = torch.where(causal_mask, attn_weights, torch.tensor(MIN))
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output)


class Layer(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.input_layernorm = RMSNorm(WIDTH)
        self.self_attn = attn
        self.post_attention_layernorm = RMSNorm(WIDTH)
        self.mlp = MLP()

    def forward(self, hidden_states, *args):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), *args)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Body(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, WIDTH)
        self.layers = nn.ModuleList([Layer(attn()) for _ in range(LAYERS)])
        self.norm = RMSNorm(WIDTH)


class LlamaBool(nn.Module):
    takes_position_ids = True

    def __init__(self):
        super().__init__()
        self.model = Body(lambda: BoolAttention(2))
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.register_buffer("inv_freq", inv_freq(), persistent=False)

    def rotary(self, x, position_ids):  # LlamaRotaryEmbedding.forward
        inv_freq_expanded = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
        position_ids_expanded = position_ids[:, None, :].float()
        freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    def forward(self, input_ids, attention_mask, position_ids):
        inputs_embeds = self.model.embed_tokens(input_ids)
        past_seen_tokens = 0
        cache_position = torch.arange(past_seen_tokens, past_seen_tokens + inputs_embeds.shape[1])
        # create_causal_mask -> sdpa_mask: and_masks(causal_mask_function, padding_mask_function)
        kv_length, kv_offset = attention_mask.shape[-1], 0
        kv_arange = torch.arange(kv_length) + kv_offset
        causal = kv_arange[None, :] <= cache_position[:, None]
        padding = attention_mask.bool()[:, None, None, :]
        mask = causal[None, None, :, :] & padding
        position_embeddings = self.rotary(inputs_embeds, position_ids)
        h = inputs_embeds
        for layer in self.model.layers:
            h = layer(h, position_embeddings, mask)
        return self.lm_head(self.model.norm(h))


# ------------------------------------------------------------------ llama_additive (transformers 4.36)
def make_causal_mask(input_ids_shape, dtype, past_key_values_length=0):
    bsz, tgt_len = input_ids_shape
    mask = torch.full((tgt_len, tgt_len), torch.finfo(dtype).min)
    mask_cond = torch.arange(mask.size(-1))
    mask.masked_fill_(mask_cond < (mask_cond + 1).view(mask.size(-1), 1), 0)
    mask = mask.to(dtype)
    if past_key_values_length > 0:
        mask = torch.cat([torch.zeros(tgt_len, past_key_values_length, dtype=dtype), mask], dim=-1)
    return mask[None, None, :, :].expand(bsz, 1, tgt_len, tgt_len + past_key_values_length)


def expand_mask(mask, dtype, tgt_len=None):
    bsz, src_len = mask.size()
    tgt_len = tgt_len if tgt_len is not None else src_len
    expanded_mask = mask[:, None, None, :].expand(bsz, 1, tgt_len, src_len).to(dtype)
    inverted_mask = 1.0 - expanded_mask
    return inverted_mask.masked_fill(inverted_mask.to(torch.bool), torch.finfo(dtype).min)


def prepare_4d_causal_attention_mask(attention_mask, input_shape, inputs_embeds, past_key_values_length):
    key_value_length = input_shape[-1] + past_key_values_length
    query_length = input_shape[-1]
    dtype = inputs_embeds.dtype
    causal_4d_mask = None
    if input_shape[-1] > 1:
        causal_4d_mask = make_causal_mask((attention_mask.shape[0], query_length), dtype,
                                          past_key_values_length=key_value_length - query_length)
    expanded_attn_mask = expand_mask(attention_mask, dtype, tgt_len=query_length)
    if causal_4d_mask is not None:
        expanded_attn_mask = causal_4d_mask.masked_fill(expanded_attn_mask.bool(), torch.finfo(dtype).min)
    return expanded_attn_mask


class RotaryTables(nn.Module):  # LlamaRotaryEmbedding of transformers 4.36
    def __init__(self):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq(), persistent=False)
        t = torch.arange(MAX_POS, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self, x, seq_len):
        return self.cos_cached[:seq_len].to(dtype=x.dtype), self.sin_cached[:seq_len].to(dtype=x.dtype)


class AdditiveAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads, self.head_dim, self.num_key_value_heads = HEADS, HEAD_DIM, HEADS
        self.q_proj = nn.Linear(WIDTH, HEADS * HEAD_DIM, bias=False)
        self.k_proj = nn.Linear(WIDTH, HEADS * HEAD_DIM, bias=False)
        self.v_proj = nn.Linear(WIDTH, HEADS * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, WIDTH, bias=False)
        self.rotary_emb = RotaryTables()

    def forward(self, hidden_states, attention_mask, position_ids):
        bsz, q_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        kv_seq_len = key_states.shape[-2]
        cos, sin = self.rotary_emb(value_states, seq_len=kv_seq_len)
        cos = cos[position_ids].unsqueeze(1)  # apply_rotary_pos_emb
        sin = sin[position_ids].unsqueeze(1)
        query_states = (query_states * cos) + (rotate_half(query_states) * sin)
        key_states = (key_states * cos) + (rotate_half(key_states) * sin)
        key_states = repeat_kv(key_states, 1)
        value_states = repeat_kv(value_states, 1)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
        attn_weights = attn_weights + attention_mask
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(bsz, q_len, WIDTH)
        return self.o_proj(attn_output)


class LlamaAdditive(nn.Module):
    takes_position_ids = True

    def __init__(self):
        super().__init__()
        self.model = Body(AdditiveAttention)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, input_ids, attention_mask, position_ids):
        batch_size, seq_length = input_ids.shape
        past_key_values_length = 0
        inputs_embeds = self.model.embed_tokens(input_ids)
        mask = prepare_4d_causal_attention_mask(attention_mask, (batch_size, seq_length), inputs_embeds,
                                                past_key_values_length)
        h = inputs_embeds
        for layer in self.model.layers:
            h = layer(h, mask, position_ids)
        return self.lm_head(self.model.norm(h))


# ------------------------------------------------------------------ gpt2 (transformers 4.36)
class Conv1D(nn.Module):
    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class GPT2Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones((MAX_POS, MAX_POS), dtype=torch.bool)).view(
            1, 1, MAX_POS, MAX_POS), persistent=False)
        self.embed_dim, self.num_heads, self.head_dim, self.split_size = WIDTH, HEADS, HEAD_DIM, WIDTH
        self.c_attn = Conv1D(3 * WIDTH, WIDTH)
        self.c_proj = Conv1D(WIDTH, WIDTH)

    def _split_heads(self, tensor, num_heads, attn_head_size):
        new_shape = tensor.size()[:-1] + (num_heads, attn_head_size)
        return tensor.view(new_shape).permute(0, 2, 1, 3)

    def _merge_heads(self, tensor, num_heads, attn_head_size):
        tensor = tensor.permute(0, 2, 1, 3).contiguous()
        new_shape = tensor.size()[:-2] + (num_heads * attn_head_size,)
        return tensor.view(new_shape)

    def _attn(self, query, key, value, attention_mask):
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        attn_weights = attn_weights / torch.full([], value.size(-1) ** 0.5, dtype=attn_weights.dtype)
        query_length, key_length = query.size(-2), key.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length: key_length, :key_length]
        mask_value = torch.full([], torch.finfo(attn_weights.dtype).min, dtype=attn_weights.dtype)
        attn_weights = torch.where(causal_mask, attn_weights.to(attn_weights.dtype), mask_value)
        attn_weights = attn_weights + attention_mask
        attn_weights = F.softmax(attn_weights, dim=-1)
        return torch.matmul(attn_weights, value)

    def forward(self, hidden_states, attention_mask):
        query, key, value = self.c_attn(hidden_states).split(self.split_size, dim=2)
        query = self._split_heads(query, self.num_heads, self.head_dim)
        key = self._split_heads(key, self.num_heads, self.head_dim)
        value = self._split_heads(value, self.num_heads, self.head_dim)
        attn_output = self._attn(query, key, value, attention_mask)
        attn_output = self._merge_heads(attn_output, self.num_heads, self.head_dim)
        return self.c_proj(attn_output)


class GPT2MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(4 * WIDTH, WIDTH)
        self.c_proj = Conv1D(WIDTH, 4 * WIDTH)

    def forward(self, x):
        return self.c_proj(tm.gelu_tanh(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH, eps=1e-5)
        self.attn = GPT2Attention()
        self.ln_2 = nn.LayerNorm(WIDTH, eps=1e-5)
        self.mlp = GPT2MLP()

    def forward(self, hidden_states, attention_mask):
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states), attention_mask)
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class GPT2Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.wpe = nn.Embedding(MAX_POS, WIDTH)
        self.h = nn.ModuleList([GPT2Block() for _ in range(LAYERS)])
        self.ln_f = nn.LayerNorm(WIDTH, eps=1e-5)


class GPT2(nn.Module):
    takes_position_ids = False

    def __init__(self):
        super().__init__()
        self.transformer = GPT2Body()

    def forward(self, input_ids, attention_mask, position_ids=None):
        t = self.transformer
        input_shape = input_ids.size()
        batch_size = input_ids.shape[0]
        past_length = 0
        if position_ids is None:
            position_ids = torch.arange(past_length, input_shape[-1] + past_length, dtype=torch.long)
            position_ids = position_ids.unsqueeze(0)
        attention_mask = attention_mask.view(batch_size, -1)
        attention_mask = attention_mask[:, None, None, :]
        attention_mask = attention_mask.to(dtype=torch.float32)
        attention_mask = (1.0 - attention_mask) * torch.finfo(torch.float32).min
        hidden_states = t.wte(input_ids) + t.wpe(position_ids)
        for block in t.h:
            hidden_states = block(hidden_states, attention_mask)
        hidden_states = t.ln_f(hidden_states)
        return F.linear(hidden_states, t.wte.weight)  # tied lm_head


# ------------------------------------------------------------------ trilu (fused qkv, Trilu mask)
class TriluAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv_proj = nn.Linear(WIDTH, 3 * HEADS * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, WIDTH, bias=False)

    def forward(self, hidden_states, cos, sin, causal, padding):
        bsz, q_len, _ = hidden_states.size()
        qkv = self.qkv_proj(hidden_states)
        pos = HEADS * HEAD_DIM
        query_states = qkv[..., :pos].view(bsz, q_len, HEADS, HEAD_DIM).transpose(1, 2)
        key_states = qkv[..., pos: 2 * pos].view(bsz, q_len, HEADS, HEAD_DIM).transpose(1, 2)
        value_states = qkv[..., 2 * pos:].view(bsz, q_len, HEADS, HEAD_DIM).transpose(1, 2)
        query_states = (query_states * cos) + (rotate_half(query_states) * sin)
        key_states = (key_states * cos) + (rotate_half(key_states) * sin)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(HEAD_DIM)
        attn_weights = attn_weights + causal
        attn_weights = attn_weights.masked_fill(padding, MIN)
        attn_weights = F.softmax(attn_weights, dim=-1)
        attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).reshape(bsz, q_len, -1)
        return self.o_proj(attn_output)


class Trilu(nn.Module):
    takes_position_ids = False

    def __init__(self):
        super().__init__()
        self.model = Body(TriluAttention)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.register_buffer("inv_freq", inv_freq(), persistent=False)

    def forward(self, input_ids, attention_mask, position_ids=None):
        seq_len = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(0, seq_len, dtype=torch.long).unsqueeze(0)
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[:, None], emb.sin()[:, None]
        causal = torch.triu(torch.full((seq_len, seq_len), float("-inf")), diagonal=1)
        padding = (attention_mask == 0)[:, None, None, :]
        h = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            h = layer(h, cos, sin, causal, padding)
        return self.lm_head(self.model.norm(h))


# ------------------------------------------------------------------ fixed_reshape
class FixedReshapeAttention(BoolAttention):
    def forward(self, hidden_states, cos, sin, attention_mask):
        bsz, q_len, _ = hidden_states.size()
        nkv = HEADS // self.num_key_value_groups
        query_states = self.q_proj(hidden_states).view(bsz, q_len, HEADS, HEAD_DIM).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(bsz, q_len, nkv, HEAD_DIM).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(bsz, q_len, nkv, HEAD_DIM).transpose(1, 2)
        query_states = (query_states * cos) + (rotate_half(query_states) * sin)
        key_states = (key_states * cos) + (rotate_half(key_states) * sin)
        # the head repeat as one reshape to the attention's fixed 4-D shape
        key_states = key_states[:, :, None].expand(bsz, nkv, self.num_key_value_groups, q_len, HEAD_DIM) \
            .reshape(bsz, HEADS, q_len, HEAD_DIM)
        value_states = value_states[:, :, None].expand(bsz, nkv, self.num_key_value_groups, q_len, HEAD_DIM) \
            .reshape(bsz, HEADS, q_len, HEAD_DIM)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(HEAD_DIM)
        attn_weights = attn_weights + attention_mask
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).contiguous().reshape(bsz, q_len, WIDTH)
        return self.o_proj(attn_output)


class FixedReshape(nn.Module):
    takes_position_ids = True

    def __init__(self):
        super().__init__()
        self.model = Body(lambda: FixedReshapeAttention(2))
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.register_buffer("inv_freq", inv_freq(), persistent=False)

    def forward(self, input_ids, attention_mask, position_ids):
        bsz, seq_length = input_ids.shape
        inputs_embeds = self.model.embed_tokens(input_ids)
        mask = prepare_4d_causal_attention_mask(attention_mask, (bsz, seq_length), inputs_embeds, 0)
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[:, None], emb.sin()[:, None]
        h = inputs_embeds
        for layer in self.model.layers:
            h = layer(h, cos, sin, mask)
        return self.lm_head(self.model.norm(h))


STYLES = {"llama_bool": LlamaBool, "llama_additive": LlamaAdditive, "gpt2": GPT2, "trilu": Trilu,
          "fixed_reshape": FixedReshape}


def build(style):
    m = STYLES[style]()
    tm.init_weights(m, SEEDS[style])
    if style == "gpt2":
        with torch.no_grad():  # positions that matter: tinymodels' 0.1 leaves GPT-2 repeating itself
            m.transformer.wpe.weight.mul_(4)
    return m.eval()


def positions(mask):
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def logits(model, ids, mask):
    with torch.inference_mode():
        return model(ids, mask, positions(mask))


def greedy(model, rows):
    """Greedy decoding of rows in one left-padded batch, re-running the whole sequence."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = [[] for _ in rows]
    gaps = [math.inf for _ in rows]
    for _ in range(MAX_NEW):
        last = logits(model, ids, mask)[:, -1, :]
        top = torch.topk(last, 2, dim=-1).values
        nxt = torch.argmax(last, dim=-1)
        for i in range(len(rows)):
            out[i].append(int(nxt[i]))
            gaps[i] = min(gaps[i], float(top[i, 0] - top[i, 1]))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
    return out, gaps


def export(model, style, path):
    names = ["input_ids", "attention_mask"] + (["position_ids"] if model.takes_position_ids else [])
    B, T = 2, 6
    ids = torch.arange(B * T).reshape(B, T) % VOCAB
    mask = torch.ones(B, T, dtype=torch.int64)
    args = (ids, mask)
    if model.takes_position_ids:
        args = args + (torch.arange(T).expand(B, T).contiguous(),)
    dyn = {n: {0: "batch", 1: "sequence"} for n in names}
    dyn["logits"] = {0: "batch", 1: "sequence"}
    torch.onnx.export(model, args, path, input_names=names, output_names=["logits"],
                      dynamic_axes=dyn, opset_version=17, do_constant_folding=True)
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    return names


def main():
    torch.manual_seed(0)
    out = {"max_new_tokens": MAX_NEW, "prompts": prompts(), "models": {}}
    for style in STYLES:
        model = build(style)
        rel = f"models/kvstyle_{style}.onnx"
        names = export(model, style, os.path.join(HERE, rel))
        batch, gaps = greedy(model, prompts())
        for i, p in enumerate(prompts()):
            alone, _ = greedy(model, [p])
            assert alone[0] == batch[i], (style, i, alone[0], batch[i])
        out["models"][style] = {"file": rel, "inputs": names,
                                "greedy": [{"ids": ids, "min_gap": round(g, 6)} for ids, g in zip(batch, gaps)]}
        print(f"{style}: {os.path.getsize(os.path.join(HERE, rel))} bytes, min gap {min(gaps):.3g}, "
              f"first row {batch[0]}")
    with open(os.path.join(HERE, "expected", "kv_styles.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
