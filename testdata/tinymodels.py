"""Tiny decoder-only language models in plain PyTorch (no transformers), for tests.

Importable by the generator and oracle scripts in testdata/ (run them with
/usr/bin/python3, which has Debian's python3-torch):

    import sys; sys.path.insert(0, "testdata")
    from tinymodels import GPT2Config, GPT2LM, LlamaConfig, LlamaLM, build, load

* GPT2LM:  token + learned position embeddings, pre-LayerNorm blocks, causal multi-head
  self-attention with the attention_mask applied to keys, GELU (tanh approximation)
  MLP, final LayerNorm, lm_head tied to the token embedding (one Parameter).
  forward(input_ids, attention_mask) -> logits [batch, seq, vocab];
  positions are 0..seq-1 (as GPT-2 without position_ids).
* LlamaLM: RMSNorm, rotary embeddings from position_ids, grouped-query attention with
  repeat_kv, SwiGLU MLP, untied lm_head, no biases.
  forward(input_ids, attention_mask, position_ids) -> logits.
* LlamaKVLM: LlamaLM (same parameters) with a KV cache, as optimum's "with past"
  exports: forward(input_ids, attention_mask, position_ids, *past) -> (logits, *presents).

Masking: a key is visible to a query when it is not in the future and its
attention_mask is 1; scores of hidden keys are replaced by MASK_VALUE (-1e9) before the
softmax (torch.where, exported as Where). A query row always sees at least itself or an
earlier valid key for right-padded batches, so no row is fully masked.

Parameter names follow HuggingFace's (transformer.h.0.attn.c_attn.weight ...,
model.layers.0.self_attn.q_proj.weight ...), but GPT-2's Conv1D weights are stored as
nn.Linear ([out, in]).
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn

MASK_VALUE = -1e9


# ----------------------------------------------------------------------------- GPT-2
@dataclass
class GPT2Config:
    vocab_size: int = 512
    n_embd: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_positions: int = 128
    layer_norm_epsilon: float = 1e-5


def gelu_tanh(x):
    # GPT-2's "gelu_new" (HF NewGELUActivation), written out as the ops it exports to.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2Attention(nn.Module):
    def __init__(self, c: GPT2Config):
        super().__init__()
        self.n_head = c.n_head
        self.head_dim = c.n_embd // c.n_head
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd)
        # causal mask buffer, sliced to [:T, :T] (as GPT-2's `bias` buffer); not a parameter
        self.register_buffer(
            "bias", torch.tril(torch.ones(c.n_positions, c.n_positions, dtype=torch.bool))
            .view(1, 1, c.n_positions, c.n_positions), persistent=False)

    def forward(self, x, key_mask):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        allowed = self.bias[:, :, :T, :T] & key_mask  # [1,1,T,T] & [B,1,1,T]
        att = torch.where(allowed, att, torch.tensor(MASK_VALUE, dtype=att.dtype))
        att = torch.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)


class GPT2MLP(nn.Module):
    def __init__(self, c: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd)
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd)

    def forward(self, x):
        return self.c_proj(gelu_tanh(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, c: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.attn = GPT2Attention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.mlp = GPT2MLP(c)

    def forward(self, x, key_mask):
        x = x + self.attn(self.ln_1(x), key_mask)
        return x + self.mlp(self.ln_2(x))


class GPT2Body(nn.Module):
    def __init__(self, c: GPT2Config):
        super().__init__()
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.n_positions, c.n_embd)
        self.h = nn.ModuleList([GPT2Block(c) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)


class GPT2LM(nn.Module):
    def __init__(self, c: GPT2Config):
        super().__init__()
        self.config = c
        self.transformer = GPT2Body(c)

    def forward(self, input_ids, attention_mask):
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)
        t = self.transformer
        x = t.wte(input_ids) + t.wpe(pos)[None]
        key_mask = (attention_mask != 0)[:, None, None, :]
        for blk in t.h:
            x = blk(x, key_mask)
        x = t.ln_f(x)
        # tied lm_head: logits = x @ wte^T (the same Parameter as the input embedding)
        return torch.matmul(x, t.wte.weight.t())


# ----------------------------------------------------------------------------- Llama
@dataclass
class LlamaConfig:
    vocab_size: int = 512
    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 128


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def repeat_kv(x, n_rep):
    B, H, T, D = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(B, H, n_rep, T, D).reshape(B, H * n_rep, T, D)


class LlamaAttention(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.nh = c.num_attention_heads
        self.nkv = c.num_key_value_heads
        self.hd = c.hidden_size // c.num_attention_heads
        self.q_proj = nn.Linear(c.hidden_size, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, allowed):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = repeat_kv(k, self.nh // self.nkv)
        v = repeat_kv(v, self.nh // self.nkv)
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.hd)
        att = torch.where(allowed, att, torch.tensor(MASK_VALUE, dtype=att.dtype))
        att = torch.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(B, T, self.nh * self.hd)
        return self.o_proj(y)


class LlamaMLP(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        g = self.gate_proj(x)
        return self.down_proj(g * torch.sigmoid(g) * self.up_proj(x))  # SiLU(gate) * up


class LlamaLayer(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = LlamaAttention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = LlamaMLP(c)

    def forward(self, x, cos, sin, allowed):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, allowed)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBody(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([LlamaLayer(c) for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class LlamaLM(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.config = c
        self.model = LlamaBody(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        hd = c.hidden_size // c.num_attention_heads
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids, attention_mask, position_ids):
        x = self.model.embed_tokens(input_ids)
        T = input_ids.shape[1]
        # rotary cos/sin from position_ids: [B, 1, T, head_dim]
        freqs = position_ids[:, :, None].to(x.dtype) * self.inv_freq.to(x.dtype)[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos()[:, None]
        sin = emb.sin()[:, None]
        i = torch.arange(T, device=input_ids.device)
        causal = i[None, :] <= i[:, None]  # [T, T] key <= query
        allowed = causal[None, None] & (attention_mask != 0)[:, None, None, :]
        for layer in self.model.layers:
            x = layer(x, cos, sin, allowed)
        return self.lm_head(self.model.norm(x))


# ----------------------------------------------------------------------------- Llama + KV cache
class LlamaKVLM(LlamaLM):
    """LlamaLM with a KV cache, as optimum exports a decoder "with past" (its merged
    decoder without the If on use_cache_branch). Same parameters as LlamaLM: load
    llama.pt's state dict into it.

    forward(input_ids, attention_mask, position_ids, *past) with past = (key_0, value_0,
    key_1, value_1, ...), each float32 [batch, num_key_value_heads, past_seq, head_dim]
    (keys already rotated, heads not repeated, as HF's cache), past_seq >= 0;
    attention_mask [batch, past_seq + seq] covers the past and the current tokens;
    position_ids [batch, seq] (past_seq .. past_seq + seq - 1 when decoding).
    Returns (logits, present key_0, present value_0, ...), presents [batch, kv_heads,
    past_seq + seq, head_dim] = past concatenated with the current tokens' keys/values.
    Query i (0-based among the current tokens) sees key j (0-based over past + current)
    when j <= past_seq + i and attention_mask[j] is 1. With an empty past the logits
    are LlamaLM's."""

    def forward(self, input_ids, attention_mask, position_ids, *past):
        L = self.config.num_hidden_layers
        assert len(past) == 2 * L, f"want {2 * L} past tensors, got {len(past)}"
        x = self.model.embed_tokens(input_ids)
        T = input_ids.shape[1]
        P = past[0].shape[2]
        freqs = position_ids[:, :, None].to(x.dtype) * self.inv_freq.to(x.dtype)[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos()[:, None]
        sin = emb.sin()[:, None]
        i = torch.arange(T, device=input_ids.device)
        j = torch.arange(P + T, device=input_ids.device)
        causal = j[None, :] <= (i[:, None] + P)  # [T, P+T] key <= query + past
        allowed = causal[None, None] & (attention_mask != 0)[:, None, None, :]
        presents = []
        for n, layer in enumerate(self.model.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            B = h.shape[0]
            q = a.q_proj(h).view(B, T, a.nh, a.hd).transpose(1, 2)
            k = a.k_proj(h).view(B, T, a.nkv, a.hd).transpose(1, 2)
            v = a.v_proj(h).view(B, T, a.nkv, a.hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = torch.cat((past[2 * n], k), dim=2)
            v = torch.cat((past[2 * n + 1], v), dim=2)
            presents += [k, v]
            kr = repeat_kv(k, a.nh // a.nkv)
            vr = repeat_kv(v, a.nh // a.nkv)
            att = torch.matmul(q, kr.transpose(-1, -2)) / math.sqrt(a.hd)
            att = torch.where(allowed, att, torch.tensor(MASK_VALUE, dtype=att.dtype))
            att = torch.softmax(att, dim=-1)
            y = torch.matmul(att, vr).transpose(1, 2).reshape(B, T, a.nh * a.hd)
            x = x + a.o_proj(y)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return (self.lm_head(self.model.norm(x)), *presents)

    def empty_past(self, batch, past_len=0):
        """Zero past tensors [batch, kv_heads, past_len, head_dim] for every layer."""
        c = self.config
        hd = c.hidden_size // c.num_attention_heads
        return tuple(torch.zeros(batch, c.num_key_value_heads, past_len, hd)
                     for _ in range(2 * c.num_hidden_layers))


def kv_input_names(num_layers):
    """optimum's names: input_ids, attention_mask, position_ids, past_key_values.{i}.key/value."""
    return ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def kv_output_names(num_layers):
    """optimum's names: logits, present.{i}.key/value."""
    return ["logits"] + [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def load_kv(path):
    """A LlamaKVLM holding the weights of a llama .pt written by save() (e.g. llama.pt)."""
    d = torch.load(path)
    assert d["kind"] == "llama", d["kind"]
    m = LlamaKVLM(LlamaConfig(**d["config"]))
    m.load_state_dict(d["state_dict"])
    return m.eval()


# ----------------------------------------------------------------------------- init
def init_weights(model, seed):
    """Deterministic random init with scales that give clearly non-uniform logits."""
    g = torch.Generator().manual_seed(seed)

    def normal_(p, std, mean=0.0):
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std + mean)

    for name, p in model.named_parameters():  # named_parameters: tied weights appear once
        if name.endswith(("wte.weight", "embed_tokens.weight", "lm_head.weight")):
            normal_(p, 0.3)        # also the tied GPT-2 lm_head: logits std ~ 1.5
        elif name.endswith("wpe.weight"):
            normal_(p, 0.1)
        elif "ln" in name.split(".")[-2] or "norm" in name.split(".")[-2]:
            normal_(p, 0.1, 1.0 if name.endswith("weight") else 0.0)  # norm weights ~1, biases ~0
        elif name.endswith(".bias"):
            normal_(p, 0.02)
        else:
            normal_(p, 0.15)       # projections
    return model


SEEDS = {"gpt2": 1, "llama": 2}


def build(name, vocab_size, seed=None, **overrides):
    """A freshly initialised model: name 'gpt2' or 'llama'."""
    seed = SEEDS[name] if seed is None else seed
    if name == "gpt2":
        m = GPT2LM(GPT2Config(vocab_size=vocab_size, **overrides))
    elif name == "llama":
        m = LlamaLM(LlamaConfig(vocab_size=vocab_size, **overrides))
    else:
        raise ValueError(name)
    return init_weights(m, seed).eval()


def save(model, path):
    torch.save({"kind": "gpt2" if isinstance(model, GPT2LM) else "llama",
                "config": asdict(model.config), "state_dict": model.state_dict()}, path)


def load(path):
    """Load a model saved by save() (testdata/models/{gpt2,llama}.pt)."""
    d = torch.load(path)
    m = GPT2LM(GPT2Config(**d["config"])) if d["kind"] == "gpt2" else LlamaLM(LlamaConfig(**d["config"]))
    m.load_state_dict(d["state_dict"])
    return m.eval()


def input_names(model):
    if isinstance(model, LlamaLM):
        return ["input_ids", "attention_mask", "position_ids"]
    return ["input_ids", "attention_mask"]


def forward(model, input_ids, attention_mask, position_ids=None):
    """Calls the model with the inputs it takes (position_ids only for Llama)."""
    if isinstance(model, LlamaLM):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        return model(input_ids, attention_mask, position_ids)
    return model(input_ids, attention_mask)


def completion_logps(logits, input_ids, completion_mask):
    """The log-prob contract (ortalign's scoring): per row, SUM over completion positions t (t >= 1) of
    log_softmax(logits[t-1])[input_ids[t]]. completion_mask is 1 on completion tokens."""
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    tok = torch.gather(lp, 2, input_ids[:, 1:, None]).squeeze(2)
    m = completion_mask[:, 1:].to(lp.dtype)
    return (tok * m).sum(-1), tok * m
