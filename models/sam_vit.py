"""The ViT image encoder of segment-anything style checkpoints (SAM / MedSAM ViT-B).

Written for export: the module and parameter names follow the public SAM checkpoints
(``image_encoder.blocks.N.attn.qkv.weight`` ...), so their state dicts load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

VIT_CONFIGS = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16,
              "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16,
              "global_attn_indexes": (7, 15, 23, 31)},
}


class LayerNorm2d(nn.Module):
    """Layer norm over the channel axis of an NCHW tensor."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def _relative_positions(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis."""
    span = 2 * max(q_size, k_size) - 1
    if table.shape[0] != span:
        table = F.interpolate(table.T[None], size=span, mode="linear")[0].T
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    index = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return table[index.long()]


class Attention(nn.Module):
    """Multi-head self attention with decomposed relative positions."""

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        rel_h = _relative_positions(h, h, self.rel_pos_h)
        rel_w = _relative_positions(w, w, self.rel_pos_w)
        q_grid = q.reshape(b * self.num_heads, h, w, -1)
        bias_h = torch.einsum("bhwc,hkc->bhwk", q_grid, rel_h)
        bias_w = torch.einsum("bhwc,wkc->bhwk", q_grid, rel_w)
        attn = attn.view(b * self.num_heads, h, w, h, w)
        attn = attn + bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
        attn = attn.view(b * self.num_heads, h * w, h * w).softmax(dim=-1)
        out = (attn @ v).view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(b, h, w, -1))


def _partition(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    b, h, w, c = x.shape
    pad_h = (size - h % size) % size
    pad_w = (size - w % size) % size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // size, size, wp // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size, size, c), (hp, wp)


def _unpartition(windows: torch.Tensor, size: int, padded: tuple[int, int],
                 original: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    b = windows.shape[0] // (hp * wp // size // size)
    x = windows.view(b, hp // size, wp // size, size, size, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, -1)
    return x[:, : original[0], : original[1], :]


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, grid: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        size = (window_size, window_size) if window_size > 0 else (grid, grid)
        self.attn = Attention(dim, num_heads, size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, dim * 4)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, padded = _partition(x, self.window_size)
            x = self.attn(x)
            x = _unpartition(x, self.window_size, padded, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, patch: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder: [B, 3, 1024, 1024] -> [B, 256, 64, 64]."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int,
                 global_attn_indexes: tuple[int, ...], img_size: int = 1024,
                 patch: int = 16, window_size: int = 14, out_chans: int = 256) -> None:
        super().__init__()
        grid = img_size // patch
        self.img_size = img_size
        self.patch_embed = PatchEmbed(embed_dim, patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, 0 if i in global_attn_indexes else window_size, grid)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


def build_vit_encoder(arch: str = "vit_b", img_size: int = 1024) -> ImageEncoderViT:
    """An untrained ViT image encoder of the given SAM size."""
    if arch not in VIT_CONFIGS:
        raise ValueError(f"unknown ViT size {arch!r}; choose one of {', '.join(VIT_CONFIGS)}")
    return ImageEncoderViT(**VIT_CONFIGS[arch], img_size=img_size)


def init_random_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a small random value (for testing the export path)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            fan = param.shape[-1] if param.ndim > 1 else 1
            param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(max(fan, 1)))
    return module
