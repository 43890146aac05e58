"""eCLIP on open_clip (frozen harness): towers, text/image encoders and the three expert-path
building blocks. The template composes them; configs are dataclasses, additions are
small modules next to (not inside) the open_clip towers.

Expert variants (how extra, heatmap-guided pairs enter the one contrastive loss):
  * `seed`   - `SeedHeatmapProcessor`: the seed's embedding-space processor (image and heatmap
               patchified to D = embed_dim, heatmap tokens attend to image tokens, mean-pooled);
               Beta mixup with the image embedding, a weighted auxiliary loss.
  * `pixel`  - `PixelExpert`: the original paper's AlphaMask encoder (heatmap-weighted patch
               attention -> an "expert image"), pixel mixup, then the same backbone;
               `pixel_expert_schedule` is its warm-up / ramp / anneal schedule.
  * `tokens` - `token_pool`: heatmap(box)-weighted pooling of the image tower's patch tokens.
The contrastive loss and the logit-scale clamp live in the template (`train.py`), where an
experiment can change them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

import open_clip


@dataclass
class ClipConfig:
    """Shape of the two towers (open_clip CLIPVisionCfg / CLIPTextCfg subsets)."""
    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_head_width: int = 64
    context_length: int = 48
    vocab_size: int = 49408          # SimpleTokenizer's vocabulary
    text_width: int = 128
    text_heads: int = 4
    text_layers: int = 4
    init_logit_scale: float = math.log(1 / 0.07)

    def open_clip_kwargs(self) -> dict:
        return dict(
            embed_dim=self.embed_dim,
            vision_cfg=dict(image_size=self.image_size, patch_size=self.patch_size, width=self.vision_width,
                            layers=self.vision_layers, head_width=self.vision_head_width),
            text_cfg=dict(context_length=self.context_length, vocab_size=self.vocab_size, width=self.text_width,
                          heads=self.text_heads, layers=self.text_layers),
            init_logit_scale=self.init_logit_scale,
        )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def _read_state_dict(path: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(p))
    else:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def build_clip(cfg: ClipConfig, pretrained: str = "", pretrained_visual: str = "", pretrained_text: str = "",
               log=print) -> open_clip.CLIP:
    """An open_clip CLIP from `cfg` (random init, no download), with optional local weights.

    pretrained: a whole-model state dict (.pt/.bin/.safetensors, open_clip key names), strict.
    pretrained_visual / pretrained_text: one tower's state dict (keys relative to `visual.` or
    to the text modules), loaded non-strictly; missing and unexpected key counts are logged.
    """
    model = open_clip.CLIP(**cfg.open_clip_kwargs())
    loaded = []
    if pretrained:
        sd = _read_state_dict(pretrained)
        model.load_state_dict(sd, strict=True)
        loaded.append(f"model <- {pretrained}")
    if pretrained_visual:
        sd = _read_state_dict(pretrained_visual)
        sd = {k[len("visual."):] if k.startswith("visual.") else k: v for k, v in sd.items()}
        res = model.visual.load_state_dict(sd, strict=False)
        loaded.append(f"visual <- {pretrained_visual} ({len(res.missing_keys)} missing, "
                      f"{len(res.unexpected_keys)} unexpected keys)")
    if pretrained_text:
        sd = _read_state_dict(pretrained_text)
        res = model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("visual.")}, strict=False)
        missing = [k for k in res.missing_keys if not k.startswith("visual.")]
        loaded.append(f"text <- {pretrained_text} ({len(missing)} missing, {len(res.unexpected_keys)} unexpected keys)")
    n = sum(p.numel() for p in model.parameters())
    if loaded:
        log(f"model: {n / 1e6:.2f} M parameters; pretrained weights: " + "; ".join(loaded))
    else:
        log(f"model: {n / 1e6:.2f} M parameters; training FROM SCRATCH (random init, no pretrained weights set)")
    return model


def encode_image(model: open_clip.CLIP, images: torch.Tensor, with_tokens: bool = False):
    """Projected (unnormalised) image embedding [B, E]; with_tokens also returns the patch tokens
    [B, grid*grid, width] (after ln_post, before the projection)."""
    v = model.visual
    old = v.output_tokens
    v.output_tokens = True
    try:
        pooled, tokens = v(images)
    finally:
        v.output_tokens = old
    return (pooled, tokens) if with_tokens else pooled


def encode_text(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's encode_text on tokens trimmed to the longest sequence in the batch.

    Exact up to float rounding: the text tower is causal with argmax (end-of-text) pooling, so
    padding after the longest sequence never influences the pooled output. Saves most of the
    text compute on short captions and phrases.
    """
    tokens = tokens.long()
    L = int((tokens != 0).sum(1).max().clamp_min(1))
    t = tokens[:, :L]
    x = model.token_embedding(t) + model.positional_embedding[:L]
    mask = model.attn_mask[:L, :L] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), t.argmax(dim=-1)]
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
    return x


# ----------------------------------------------------------------------------------------------
# Expert variant `seed`: the seed's embedding-space heatmap processor

class SeedHeatmapProcessor(nn.Module):
    """Conv2d(3, D, p, p)(image) and Conv2d(1, D, p, p)(heatmap) -> MHA(q = LN(heat),
    k = LN(img), v = img) -> mean over patches -> [B, D] (`masked_emb`). Bypasses the backbone."""

    def __init__(self, dim: int, patch_size: int, heads: int = 4):
        super().__init__()
        self.img_conv = nn.Conv2d(3, dim, patch_size, patch_size)
        self.hm_conv = nn.Conv2d(1, dim, patch_size, patch_size)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, images: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        img = self.img_conv(images).flatten(2).transpose(1, 2)               # [B, N, D]
        hm = self.hm_conv(heatmaps[:, None]).flatten(2).transpose(1, 2)      # [B, N, D]
        out, _ = self.attn(self.ln_q(hm), self.ln_k(img), img, need_weights=False)
        return out.mean(dim=1)


# ----------------------------------------------------------------------------------------------
# Expert variant `pixel`: the original eCLIP AlphaMask encoder (expert image + pixel mixup)

class PixelExpert(nn.Module):
    """heatmap /= its max; P = Conv(img), H = Conv(hm * img) (one shared patchify conv);
    MHA(q = H, k = v = P) + Linear; ConvTranspose2d back to pixels -> the expert image."""

    def __init__(self, patch_size: int, dim: int = 256, heads: int = 8):
        super().__init__()
        self.patchify = nn.Conv2d(3, dim, patch_size, patch_size)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Linear(dim, dim)
        self.unpatchify = nn.ConvTranspose2d(dim, 3, patch_size, patch_size)

    def forward(self, images: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        hm = heatmaps[:, None]
        hm = hm / hm.flatten(1).amax(1).clamp_min(1e-6)[:, None, None, None]
        p = self.patchify(images)
        g = p.shape[-1]
        pt = p.flatten(2).transpose(1, 2)
        ht = self.patchify(hm * images).flatten(2).transpose(1, 2)
        x, _ = self.attn(ht, pt, pt, need_weights=False)
        x = self.out(x).transpose(1, 2).reshape(p.shape[0], -1, g, g)
        return self.unpatchify(x)


def pixel_expert_schedule(step: int, total: int, peak: float = 0.5, floor: float = 0.05) -> float:
    """The original eCLIP expert probability: 0 for the first 10 % of steps (reconstruction
    warm-up), linear floor -> peak over the next 30 %, back to floor over 40 %, then floor."""
    f = step / max(1, total)
    if f < 0.1:
        return 0.0
    if f < 0.4:
        return floor + (peak - floor) * (f - 0.1) / 0.3
    if f < 0.8:
        return peak - (peak - floor) * (f - 0.4) / 0.4
    return floor


# ----------------------------------------------------------------------------------------------
# Expert variant `tokens`: heatmap-weighted pooling of the ViT patch tokens

def token_pool(model: open_clip.CLIP, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, width], weights [B, N] (>= 0; rows summing to 0 fall back to uniform) ->
    projected embedding [B, E] of the weighted mean token."""
    w = weights.float()
    s = w.sum(1, keepdim=True)
    w = torch.where(s > 0, w / s.clamp_min(1e-12), torch.full_like(w, 1.0 / w.shape[1]))
    pooled = (w[..., None] * tokens).sum(1)
    proj = model.visual.proj
    return pooled @ proj if proj is not None else pooled


def sample_region(box_valid: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random valid region per row ([B] indices; 0 where a row has none)."""
    w = box_valid.float()
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
    return torch.multinomial(w.cpu(), 1, generator=generator).squeeze(1).to(box_valid.device)


def describe(cfg: ClipConfig) -> dict:
    return asdict(cfg)
