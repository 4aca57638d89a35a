"""The sequence user tower's encoder: a user's recent items, in order, through causal attention.

SASRec's shape (Kang & McAuley, 2018) in a few lines: the item rows of the user's ``L`` most
recent items (the item tower's own id table, so "what I bought" and "what I might buy" share a
space), plus a learned embedding of each slot, through ``sequence_layers`` pre-norm blocks of
causal self-attention and a feed-forward layer. Slot ``s`` sees slots ``<= s`` only, so the
output at every slot is the user as of that item: training scores each slot against the item
that came next (every prefix of a sequence in one pass), serving reads the newest slot.

Sequences are left-padded: ``items (B, L)``, the newest item at slot ``L - 1``, padding slots
hold ``pad`` (the item table's "unknown" row) and are masked out of every key but their own, so a
padding slot never feeds a real one and no row of the attention is empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from towers.model.config import TwoTowerConfig


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where slot ``s`` attends to slots ``<= s`` that hold an item."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x (B, L, E)``, ``allowed (B, 1, L, L)`` bool (query, key) → ``(B, L, E)``."""
        b, length, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=-1)  # each (B, L, E)
        q, k, v = (t.view(b, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)  # (B, H, L, e)
        return self.out(y.transpose(1, 2).reshape(b, length, dim))


class SequenceBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + ffn(ln(x))``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_attention, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm_attention(x), allowed))  # (B, L, E)
        return x + self.drop(self.ffn(self.norm_ffn(x)))  # (B, L, E)


class SequenceEncoder(nn.Module):
    """``items (B, L)`` (left-padded with ``pad``) and the item rows they index → ``(B, L, E)``,
    slot ``s`` the user as of the item at slot ``s``."""

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        dim, self.length, self.pad = config.id_dim, config.sequence_length, config.n_items
        self.sparse = bool(config.sparse_embeddings)
        self.slots = nn.Parameter(torch.randn(self.length, dim) * 0.02)  # (L, E)
        self.norm_input = nn.LayerNorm(dim)
        self.drop = nn.Dropout(config.sequence_dropout)
        self.blocks = nn.ModuleList(
            SequenceBlock(dim, config.sequence_heads, config.sequence_dropout)
            for _ in range(config.sequence_layers)
        )
        self.norm_output = nn.LayerNorm(dim)

    def forward(self, items: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        if items.shape[1] != self.length:
            raise ValueError(f"sequences of {items.shape[1]} slots, the encoder has {self.length}")
        # Slots that are padding in every row go: they change no real slot (masked keys) and
        # most users are far shorter than L, the more so in a batch of windows of one length.
        occupied = (items != self.pad).any(0)  # (L,)
        start = int(occupied.int().argmax()) if bool(occupied.any()) else self.length - 1
        items = items[:, start:]  # (B, L') the occupied slots
        real = items != self.pad  # (B, L')
        rows = F.embedding(items, item_table, sparse=self.sparse)  # (B, L', E)
        x = self.drop(self.norm_input(rows + self.slots[start:])) * real[..., None]  # (B, L', E)
        span = items.shape[1]
        causal = torch.ones(span, span, dtype=torch.bool, device=items.device).tril()
        own = torch.eye(span, dtype=torch.bool, device=items.device)
        allowed = (causal & real[:, None, :]) | own  # (B, L', L') query s, keys t <= s with items
        allowed = allowed[:, None]  # (B, 1, L', L'), the same for every head
        for block in self.blocks:
            x = block(x, allowed)
        x = self.norm_output(x)  # (B, L', E)
        return F.pad(x, (0, 0, start, 0))  # (B, L, E): padding slots before them are zeros
