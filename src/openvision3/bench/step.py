"""Building and timing one training step, and the same-run reference ratios."""
from __future__ import annotations

import torch

from .options import DEFAULTS, FLUX_VAE, TINY, BenchError, BenchOptions
from .timing import alternating_median_seconds, count_flops


def build_config(opts: BenchOptions, device: torch.device):
    from ..config import get_config
    d = DEFAULTS[device.type if device.type in DEFAULTS else "cpu"]
    over = []
    if opts.tiny:
        over += TINY
        res, batch = opts.resolution or 16, opts.batch or 4
    else:
        if opts.config is None:
            over += [f"model.preset={opts.preset or d['preset']}"] + FLUX_VAE
        elif opts.preset:
            over += [f"model.preset={opts.preset}"]
        res, batch = opts.resolution or d["resolution"], opts.batch or d["batch"]
    over += [f"data.resolution={res}", f"model.image_size={res}", f"train.batch_size={batch}",
             f"train.precision={opts.precision}"]
    return get_config(opts.config, over + list(opts.overrides))


def _fixed_batch(cfg, device):
    """One fixed batch of real `shapes` images and captions (or of cfg.data.train)."""
    from ..data import make_loader, open_data
    ds = open_data(cfg.data.train, split="train", resolution=cfg.data.resolution, train=True, cfg=cfg.data, seed=0)
    batch = next(iter(make_loader(ds, cfg.train.batch_size)))
    images = batch["image"].to(device)
    if images.shape[0] < cfg.train.batch_size:
        raise BenchError(f"data gave {images.shape[0]} images, fewer than --batch {cfg.train.batch_size}")
    return images, batch["caption"]


class StepRunner:
    """A model, its optimizer and one fixed batch; runs components and whole steps."""

    def __init__(self, cfg, device: torch.device, amp_dtype, images=None, captions=None):
        from ..models.openvision3 import OpenVision3
        from ..train.optim import build_optimizer
        torch.manual_seed(0)
        self.cfg, self.device, self.amp = cfg, device, amp_dtype
        self.model = OpenVision3(cfg).to(device).train()
        self.opt = build_optimizer(self.model, cfg.train, 1e-5, device)
        self.params = self.model.trainable_parameters()
        if images is None:
            images, captions = _fixed_batch(cfg, device)
        self.images, self.captions = images, captions
        self.tokens = self.model.tokenizer(captions).to(device)
        self.latents = self.model.vae.encode(images)  # no grad: the VAE is frozen
        self.fwd = torch.compile(self.model) if cfg.train.compile else self.model

    def ctx(self):
        from ..train.run import forward_context
        return forward_context(self.device, self.amp, self.cfg.train.attention_kernel)

    def step(self, cached: bool = False, pixel_subbatch: int | None = None):
        """One full training step: forward, backward, clipping, AdamW."""
        lc = self.model.cfg.loss
        old = lc.pixel_subbatch
        if pixel_subbatch is not None:
            lc.pixel_subbatch = pixel_subbatch
        try:
            with self.ctx():
                out = self.fwd(self.images, self.tokens, latents=self.latents if cached else None)
            out["loss"].backward()
        finally:
            lc.pixel_subbatch = old
        self.optimizer_step()
        return out

    def optimizer_step(self, zero_grad: bool = True):
        t = self.cfg.train
        torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip if t.grad_clip > 0 else float("inf"))
        self.opt.step()
        if zero_grad:
            self.opt.zero_grad(set_to_none=True)

    # -- components: each returns (forward fn, forward+backward fn) ---------------------------
    def components(self) -> dict:
        m, lf, lc = self.model, self.model.loss_fn, self.model.cfg.loss
        images, tokens, latents = self.images, self.tokens, self.latents
        from ..models.text import fit_context
        with torch.no_grad(), self.ctx():  # the inputs the parts are timed on
            z_u = m.encoder(latents).float()
            pred = m.decoder(z_u).float()
            tk = fit_context(tokens, m.caption_decoder.context_length)
            keep = tk[:, 1:] != 0
            hidden = m.caption_decoder.hidden(z_u, tk[:, :-1])[keep].float()
            head_targets = tk[:, 1:][keep]
            text_feats = m.text_encoder(tokens).float()
        n = lc.pixel_subbatch if 0 < lc.pixel_subbatch < images.shape[0] else images.shape[0]

        def surrogate(x):  # a scalar whose gradient reaches every output of a tower without a loss
            return (x.float() * (torch.ones_like(x) / x.numel())).sum()

        def run(fn, backward):
            def go():
                with self.ctx():
                    out = fn()
                if backward and out.requires_grad:
                    out.backward()
            return go

        def leaf(x):
            return x.detach().requires_grad_(True)

        def decoder():
            p = m.decoder(leaf(z_u))
            return torch.nn.functional.l1_loss(p.float(), latents)

        def decode_pixel():
            p = leaf(pred)
            recon = m.vae.decode(p[:n])
            return lf.reconstruction(images[:n], recon, latents, p, lpips_weight=lc.lpips_weight)["loss_rec"]

        def caption():
            logits, targets = m.caption_decoder(leaf(z_u), tokens)  # the loss as losses.py computes it
            return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=0)

        def vocab_head():
            logits = m.caption_decoder.lm_head(leaf(hidden))
            return torch.nn.functional.cross_entropy(logits.float(), head_targets)

        def contrastive():
            feats = torch.nn.functional.normalize(m.encoder.pool(leaf(z_u)).float(), dim=-1)
            return lf.clip_loss(feats, torch.nn.functional.normalize(leaf(text_feats), dim=-1), m.logit_scale.exp())

        def optimizer():
            for p in self.params:  # gradients as after a backward, without timing one
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.optimizer_step(zero_grad=False)  # the gradients stay for the next call

        # vae_encode runs under no_grad: its "forward+backward" is its forward
        comps = {name: (run(fn, False), run(fn, True)) for name, fn in (
            ("vae_encode", lambda: m.vae.encode(images)), ("encoder", lambda: surrogate(m.encoder(latents))),
            ("latent_decoder", decoder), ("vae_decode_pixel", decode_pixel),
            ("text_encoder", lambda: surrogate(m.text_encoder(tokens))), ("caption_decoder", caption),
            ("caption_vocab_head", vocab_head), ("contrastive", contrastive))}
        comps["optimizer"] = (optimizer, optimizer)
        if not lf.rec_enabled:
            comps.pop("latent_decoder"), comps.pop("vae_decode_pixel")
        if not lf.und_enabled or lc.caption_weight <= 0:
            comps.pop("caption_decoder"), comps.pop("caption_vocab_head")
        if not lf.und_enabled or lc.alpha_contrastive <= 0:
            comps.pop("contrastive"), comps.pop("text_encoder")
        return comps


def encoder_vs_timm(runner: StepRunner, repeats: int) -> dict:
    """Our unified encoder against timm's VisionTransformer of the same shape: forward+backward
    over the same latents, same attention kernels and autocast; alternating rounds."""
    from timm.models.vision_transformer import VisionTransformer
    enc, lat = runner.model.encoder, runner.latents
    tower = runner.cfg.model.encoder
    torch.manual_seed(0)
    ref = VisionTransformer(img_size=tuple(lat.shape[-2:]), patch_size=enc.patch_size, in_chans=enc.in_channels,
                            num_classes=0, global_pool="avg", embed_dim=tower.width, depth=tower.layers,
                            num_heads=tower.heads, mlp_ratio=tower.mlp_ratio, class_token=True,
                            ).to(runner.device).train()

    def ours():
        with runner.ctx():
            z = enc(lat)
        z.float().mean().backward()

    def timm_vit():
        with runner.ctx():
            z = ref.forward_features(lat)
        z.float().mean().backward()

    med, rounds = alternating_median_seconds({"ours": ours, "timm": timm_vit}, max(5, repeats), runner.device)
    enc.zero_grad(set_to_none=True)
    per_round = sorted(t / o for t, o in zip(rounds["timm"], rounds["ours"]))  # each round's own ratio
    return {"encoder_vs_timm": med["timm"] / med["ours"], "encoder_s": med["ours"], "timm_s": med["timm"],
            "encoder_vs_timm_rounds": per_round, "encoder_vs_timm_spread": [per_round[0], per_round[-1]],
            "encoder_params": sum(p.numel() for p in enc.parameters()),
            "timm_params": sum(p.numel() for p in ref.parameters())}


def vae_ratios(runner: StepRunner, repeats: int) -> dict:
    """cache_speedup / cache_bound / pixel_subbatch_speedup on ``runner``'s model (same run), and the
    steps' times and FLOPs they come from."""
    b = runner.images.shape[0]
    quarter = max(1, b // 4)
    steps = {"on_the_fly": lambda: runner.step(cached=False), "cached": lambda: runner.step(cached=True),
             "cached_pixel_quarter": lambda: runner.step(cached=True, pixel_subbatch=quarter)}
    med, _ = alternating_median_seconds(steps, repeats, runner.device)
    flops = {k: count_flops(fn) for k, fn in steps.items()}
    runner.opt.zero_grad(set_to_none=True)
    speedup, bound = med["on_the_fly"] / med["cached"], flops["on_the_fly"] / flops["cached"]
    return {"cache_speedup": speedup, "cache_bound": bound, "cache_fraction_of_bound": speedup / bound,
            "pixel_subbatch_speedup": med["cached"] / med["cached_pixel_quarter"],
            "pixel_subbatch_bound": flops["cached"] / flops["cached_pixel_quarter"],
            "cache_and_pixel_subbatch_speedup": med["on_the_fly"] / med["cached_pixel_quarter"],
            "cache_and_pixel_subbatch_bound": flops["on_the_fly"] / flops["cached_pixel_quarter"],
            "pixel_subbatch": quarter, "ratio_steps_s": med, "ratio_steps_flops": flops}
