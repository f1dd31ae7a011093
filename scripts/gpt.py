"""A small GPT (Radford et al. 2019), built here so the profiles train a real transformer.

Its module layout is GPT-2's: token and position embeddings, pre-norm blocks of causal attention
(one fused q, k, v projection) and a 4× GELU MLP, a final LayerNorm and a head tied to the token
embedding. ``GPT(GPT2_SMALL)`` on the meta device gives the shapes of GPT-2 small's 148 tensors
(124,439,808 params) without allocating them: the bandwidth profile's realistic parameter list.
"""
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GPTConfig:
    vocab: int
    context: int
    width: int
    blocks: int
    heads: int


GPT2_SMALL = GPTConfig(vocab=50257, context=1024, width=768, blocks=12, heads=12)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.heads = config.heads
        self.ln_1 = nn.LayerNorm(config.width)
        self.c_attn = nn.Linear(config.width, 3 * config.width)
        self.attn_proj = nn.Linear(config.width, config.width)
        self.ln_2 = nn.LayerNorm(config.width)
        self.c_fc = nn.Linear(config.width, 4 * config.width)
        self.mlp_proj = nn.Linear(4 * config.width, config.width)

    def forward(self, x):
        q, k, v = rearrange(self.c_attn(self.ln_1(x)), "batch token (qkv head d) -> qkv batch head token d",
                            qkv=3, head=self.heads)
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(rearrange(attention, "batch head token d -> batch token (head d)"))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab, config.width)
        self.wpe = nn.Embedding(config.context, config.width)
        self.h = nn.ModuleList(Block(config) for _ in range(config.blocks))
        self.ln_f = nn.LayerNorm(config.width)
        for module in self.modules():  # GPT-2's initialisation: N(0, 0.02) weights, zero biases
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, tokens):
        """Next-token cross-entropy of ``tokens`` (batch, length + 1)."""
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        x = self.wte(inputs) + self.wpe(torch.arange(inputs.shape[1], device=inputs.device))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # the head is the token embedding, tied
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def parameter_shapes(config: GPTConfig) -> list:
    """The model's parameter shapes, in registration order, without allocating a byte."""
    with torch.device("meta"):
        return [tuple(p.shape) for p in GPT(config).parameters()]
