"""model/eclip.py: towers from config, trimmed text encoder, initial logit scale, the expert blocks."""
import math

import pytest
import torch

from model.eclip import (ClipConfig, PixelExpert, SeedHeatmapProcessor, build_clip, encode_image, encode_text,
                         pixel_expert_schedule, sample_region, token_pool)
from model.heatmaps import box_heatmaps, patch_coverage

CFG = ClipConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=1, vision_head_width=32,
                 context_length=24, text_width=64, text_heads=2, text_layers=1)


def clip_loss(img, txt, scale):
    """The template's contrastive loss (it lives in train.py now)."""
    img, txt = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
    logits = scale * img @ txt.T
    labels = torch.arange(img.shape[0])
    return (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_clip(CFG, log=lambda *a: None)


def _batch(b=6):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(b, 3, 32, 32, generator=g)
    tokens = torch.zeros(b, 24, dtype=torch.long)
    for i in range(b):
        n = 3 + i
        tokens[i, 0] = 49406
        tokens[i, 1:n] = torch.randint(1, 40000, (n - 1,), generator=g)
        tokens[i, n] = 49407
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.5, 0.5, 0.9, 0.9]]).expand(b, 2, 4).clone()
    valid = torch.ones(b, 2, dtype=torch.bool)
    valid[0, 1] = False
    return images, tokens, boxes, valid


def test_trimmed_text_encoder_equals_open_clip(clip):
    _, tokens, _, _ = _batch()
    with torch.no_grad():
        ref = clip.encode_text(tokens)
        got = encode_text(clip, tokens)
    assert torch.allclose(ref, got, atol=1e-5)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled, toks = encode_image(clip, img, with_tokens=True)
        assert torch.allclose(pooled, clip.encode_image(img), atol=1e-6)
    assert toks.shape == (2, CFG.grid ** 2, CFG.vision_width) and clip.visual.output_tokens is False


def test_initial_logit_scale_is_clips():
    m = build_clip(CFG, log=lambda *a: None)
    assert m.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-5)
    m = build_clip(ClipConfig(**{**CFG.__dict__, "init_logit_scale": math.log(30.0)}), log=lambda *a: None)
    assert m.logit_scale.exp().item() == pytest.approx(30.0, rel=1e-5)


def test_build_logs_from_scratch_and_loads_local_weights(tmp_path):
    lines = []
    m = build_clip(CFG, log=lines.append)
    assert "FROM SCRATCH" in lines[0]
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, tmp_path / "w.pt")
    lines.clear()
    m2 = build_clip(CFG, pretrained=str(tmp_path / "w.pt"), log=lines.append)
    assert "pretrained weights" in lines[0]
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    torch.save({k: v for k, v in m.state_dict().items() if k.startswith("visual.")}, tmp_path / "v.pt")
    m3 = build_clip(CFG, pretrained_visual=str(tmp_path / "v.pt"), log=lines.append)
    assert torch.equal(m3.visual.proj, m.visual.proj) and "visual <-" in lines[-1]
    with pytest.raises(FileNotFoundError):
        build_clip(CFG, pretrained=str(tmp_path / "nope.pt"))


def _step(params, loss):
    for p in params:
        p.grad = None
    loss.backward()
    grads = [p.grad for p in params if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    return float(loss.detach())


def test_expert_variant_seed_forward_backward():
    torch.manual_seed(0)
    clip = build_clip(CFG, log=lambda *a: None)
    proc = SeedHeatmapProcessor(CFG.embed_dim, CFG.patch_size)
    images, tokens, boxes, valid = _batch()
    heat = box_heatmaps(boxes, valid, 32)
    img = encode_image(clip, images)
    txt = encode_text(clip, tokens)
    masked = torch.nn.functional.normalize(proc(images, heat), dim=-1)
    lam = torch.distributions.Beta(0.3, 0.3).sample((6, 1))
    mixed = torch.nn.functional.normalize(lam * torch.nn.functional.normalize(img, dim=-1) + (1 - lam) * masked, dim=-1)
    scale = clip.logit_scale.exp()
    loss = clip_loss(img, txt, scale) + 0.1 * 0.5 * (clip_loss(mixed, txt, scale) + clip_loss(masked, txt, scale))
    _step(list(clip.parameters()) + list(proc.parameters()), loss)
    assert proc.hm_conv.weight.grad.abs().sum() > 0


def test_expert_variant_pixel_forward_backward_and_schedule():
    torch.manual_seed(0)
    clip = build_clip(CFG, log=lambda *a: None)
    px = PixelExpert(CFG.patch_size, dim=32, heads=4)
    images, tokens, boxes, valid = _batch()
    expert_img = px(images, box_heatmaps(boxes, valid, 32))
    assert expert_img.shape == images.shape
    lam = torch.distributions.Beta(0.2, 0.2).sample((6, 1, 1, 1))
    img, txt = encode_image(clip, images), encode_text(clip, tokens)
    img_e = encode_image(clip, lam * images + (1 - lam) * expert_img)
    loss = clip_loss(torch.cat([img, img_e]), torch.cat([txt, txt]), clip.logit_scale.exp())
    _step(list(clip.parameters()) + list(px.parameters()), loss)
    assert px.patchify.weight.grad.abs().sum() > 0
    # cold start reconstruction with an all-ones heatmap also trains the expert
    recon = torch.nn.functional.mse_loss(px(images, torch.ones_like(images[:, 0])), images)
    _step(list(px.parameters()), recon)
    s = [pixel_expert_schedule(t, 100, peak=0.5) for t in range(100)]
    assert s[0] == s[9] == 0 and s[10] == pytest.approx(0.05) and max(s) == pytest.approx(0.5, abs=0.02)
    assert s[85] == pytest.approx(0.05)


def test_expert_variant_tokens_forward_backward():
    torch.manual_seed(0)
    clip = build_clip(CFG, log=lambda *a: None)
    images, tokens, boxes, valid = _batch()
    region = sample_region(valid, torch.Generator().manual_seed(0))
    assert valid[torch.arange(6), region].all()
    one = torch.nn.functional.one_hot(region, 2).bool() & valid
    w = patch_coverage(boxes, one, CFG.grid).flatten(1)
    img, toks = encode_image(clip, images, with_tokens=True)
    e = token_pool(clip, toks, w)
    assert e.shape == (6, CFG.embed_dim)
    scale = clip.logit_scale.exp()
    loss = clip_loss(img, encode_text(clip, tokens), scale) + 0.5 * clip_loss(e, encode_text(clip, tokens), scale)
    _step(list(clip.parameters()), loss)
    # zero weights fall back to a uniform mean
    u = token_pool(clip, toks.detach(), torch.zeros(6, toks.shape[1]))
    assert torch.allclose(u, toks.detach().mean(1) @ clip.visual.proj, atol=1e-5)
