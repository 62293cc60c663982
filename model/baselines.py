"""Id-only baselines trained and evaluated in the same harness as the interest model.

Default dropouts are the best of 0.2-0.5 on ml-100k validation NDCG@10 (lr 5e-3, batch 32).

Each model follows the harness protocol (see model.train): `item_matrix(catalog) -> (N+1, d)`,
`encode(batch, mat) -> (B, T, d)`, scores = encode(...) @ item_matrix(...).T, plus `id_only`
(cold items cannot be scored) and `max_len` (history the model reads). Not used when serving.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.dataset import Catalog, SeqBatch, UserSeq

__all__ = ["GRU4Rec", "Popularity", "SASRec"]


class Popularity(nn.Module):
    """Scores every user's candidates by training-interaction counts."""

    id_only = True
    max_len = 1  # reads nothing but the last position

    def __init__(self, n_catalog: int, train: Sequence[UserSeq]):
        super().__init__()
        counts = torch.zeros(n_catalog)
        for s in train:
            counts.index_add_(0, torch.from_numpy(s.items), torch.ones(len(s.items)))
        self.register_buffer("counts", counts)

    def item_matrix(self, cat: Catalog) -> torch.Tensor:
        return self.counts.unsqueeze(1)  # (N+1, 1)

    def encode(self, batch: SeqBatch, mat: torch.Tensor) -> torch.Tensor:
        return torch.ones(*batch.items.shape, 1)  # (B, T, 1): score = count


class GRU4Rec(nn.Module):
    """GRU over item id embeddings, trained with softmax cross-entropy (tied output embeddings)."""

    id_only = True
    max_len = None

    def __init__(self, n_warm: int, d: int = 64, dropout: float = 0.4):
        super().__init__()
        self.emb = nn.Embedding(n_warm + 1, d, padding_idx=0)
        nn.init.normal_(self.emb.weight, std=0.02)
        with torch.no_grad():
            self.emb.weight[0].zero_()
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.out = nn.Linear(d, d)

    def item_matrix(self, cat: Catalog) -> torch.Tensor:
        return self.emb(cat.warm)  # (N+1, d); cold rows are the zero padding vector

    def encode(self, batch: SeqBatch, mat: torch.Tensor) -> torch.Tensor:
        hs, _ = self.gru(self.drop(mat[batch.items]))  # (B, T, d)
        return self.out(self.drop(hs))


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int, dropout: float):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.n_head, self.dropout = n_head, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class SASRec(nn.Module):
    """SASRec with full softmax cross-entropy (SASRec-CE): causal self-attention over the last
    max_len item ids, learned positions, tied item embeddings."""

    id_only = True

    def __init__(
        self,
        n_warm: int,
        d: int = 64,
        n_blocks: int = 2,
        n_head: int = 1,
        dropout: float = 0.3,
        max_len: int = 200,
    ):
        super().__init__()
        self.max_len = max_len
        self.emb = nn.Embedding(n_warm + 1, d, padding_idx=0)
        self.pos = nn.Embedding(max_len, d)
        for e in (self.emb, self.pos):
            nn.init.normal_(e.weight, std=0.02)
        with torch.no_grad():
            self.emb.weight[0].zero_()
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, n_head, dropout) for _ in range(n_blocks))
        self.ln_f = nn.LayerNorm(d)

    def item_matrix(self, cat: Catalog) -> torch.Tensor:
        return self.emb(cat.warm)  # (N+1, d)

    def encode(self, batch: SeqBatch, mat: torch.Tensor) -> torch.Tensor:
        B, T = batch.items.shape  # right-padded, so causal attention never sees padding
        x = mat[batch.items] * math.sqrt(mat.shape[1]) + self.pos.weight[:T]  # (B, T, d)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)  # (B, T, d)
