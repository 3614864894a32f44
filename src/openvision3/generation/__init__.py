"""Generation on unified tokens (RAE's framework [C]): DiT-DH + flow matching over the frozen
tokens of an OpenVision 3 encoder, decoded by its latent decoder and VAE. ``ov3 gen train``
(trainer.py) learns on tokens cached once (token_cache.py) in a normalised space (token_space.py);
a trained generator (generator.py) samples them; ``ov3 gen eval`` (evaluate.py) measures the samples
with the project's judge (judge.py). The three-space comparison is a recipe: recipes/gen_compare.py.
"""
