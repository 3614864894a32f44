"""Generation on unified tokens (RAE's framework [C]): DiT-DH + flow matching over the frozen
tokens of an OpenVision 3 encoder, decoded by its latent decoder and VAE.

    config.py       GenConfig (`ov3 gen ...` YAML presets: configs/gen_*.yaml)
    dit.py          DiT-DH: DiT body + RAE's shallow wide head
    flow.py         linear path, velocity target, logit-normal times, time shift, Euler / Heun, guidance
    token_space.py  what is generated (unified tokens or VAE latents) and its normalisation
    token_cache.py  tokens computed once per encoder + resolution, resumable batches
    trainer.py      `ov3 gen train`: the generator's step on train/'s run engine
    generator.py    a trained generator: load, sample tokens and images
    judge.py        the project's classifier that judges samples
    evaluate.py     `ov3 gen eval`: the numbers (eval/sample_quality.py), the sample grid, the
                    guidance sweep
The three-space comparison (`ov3 gen compare`) is a recipe: recipes/gen_compare.py.
"""
