"""Quality adapter A_Q (Sec. 5.3, Eq. 2): LQA hidden states -> restorer conditioning.

A Q-Former: learned queries attend to the LQA's [prompt; answer] hidden states and three token
heads map them to the spaces SD3.5's text encoders would have produced (CLIP-L, CLIP-G, T5), so
the restorer is conditioned on the assessment without ever decoding it to text. Parameter names
follow the official `QFormer` so its weights load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConnectorConfig
from .operations import compute_dtype


def pad_left(hidden: list[torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad (or keep the last `length`) hidden states; mask is True on padding.

    Matches the official `token_pad_or_truncate`: the answer tokens, at the end, always survive.
    """
    d = hidden[0].shape[-1]
    x = hidden[0].new_zeros(len(hidden), length, d)
    mask = torch.ones(len(hidden), length, dtype=torch.bool, device=hidden[0].device)
    for b, h in enumerate(hidden):
        h = h[-length:]
        x[b, length - h.shape[0] :] = h
        mask[b, length - h.shape[0] :] = False
    return x, mask


class QFormerBlock(nn.Module):
    """Post-norm block: self-attention over queries, cross-attention to the LQA states, MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = self.norm1(q + self.self_attn(q, q, q, need_weights=False)[0])
        q = self.norm2(q + self.cross_attn(q, kv, kv, key_padding_mask=mask, need_weights=False)[0])
        return self.norm3(q + self.mlp(q))


class TokenProjector(nn.Module):
    """gamma * fc2(GELU(fc1(LN(q)))): one text-encoder space per head."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * 2, bias=False)
        self.fc2 = nn.Linear(dim * 2, out_dim, bias=False)
        self.gamma = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.fc2(F.gelu(self.fc1(self.ln(x))))


class AttentionPool(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query_token.expand(x.shape[0], -1, -1)
        return self.attn(q, x, x, need_weights=False)[0]


class QualityAdapter(nn.Module):
    """A_Q. `forward(hidden, mask) -> (context [B, 2Q, t5_dim], pooled [B, l+g])`."""

    def __init__(self, config: ConnectorConfig, in_dim: int):
        super().__init__()
        self.config = config
        c = config
        self.input_norm = nn.LayerNorm(in_dim, eps=1e-6)
        self.input_proj = nn.Linear(in_dim, c.hidden_dim)
        self.query_tokens = nn.Parameter(torch.randn(1, c.num_query_tokens, c.hidden_dim) * 0.02)
        self.transformer = nn.ModuleList(QFormerBlock(c.hidden_dim, c.heads) for _ in range(c.layers))
        self.clip_g_proj = TokenProjector(c.hidden_dim, c.clip_g_dim)
        self.clip_l_proj = TokenProjector(c.hidden_dim, c.clip_l_dim)
        self.t5_xxl_proj = TokenProjector(c.hidden_dim, c.t5_dim)
        self.clip_g_pool = AttentionPool(c.clip_g_dim, c.pool_heads)
        self.clip_l_pool = AttentionPool(c.clip_l_dim, c.pool_heads)
        self.clip_g_norm = nn.LayerNorm(c.clip_g_dim)
        self.clip_l_norm = nn.LayerNorm(c.clip_l_dim)
        self.clip_g_line = nn.Parameter(torch.eye(c.clip_g_dim))
        self.clip_l_line = nn.Parameter(torch.eye(c.clip_l_dim))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = compute_dtype(self)
        kv = self.input_proj(self.input_norm(hidden.to(dtype)))
        q = self.query_tokens.expand(hidden.shape[0], -1, -1)
        for block in self.transformer:
            q = block(q, kv, mask)
        g, l, t5 = self.clip_g_proj(q), self.clip_l_proj(q), self.t5_xxl_proj(q)
        g_pooled = (self.clip_g_norm(self.clip_g_pool(g)) @ self.clip_g_line)[:, 0]
        l_pooled = (self.clip_l_norm(self.clip_l_pool(l)) @ self.clip_l_line)[:, 0]
        lg = F.pad(torch.cat((l, g), dim=-1), (0, self.config.t5_dim - l.shape[-1] - g.shape[-1]))
        context = torch.cat((lg, t5), dim=1)
        return context, torch.cat((l_pooled, g_pooled), dim=-1)

    def condition(self, hidden: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item hidden states (any lengths) -> conditioning, via the official left padding."""
        x, mask = pad_left(hidden, self.config.num_input_tokens)
        return self(x, mask)
