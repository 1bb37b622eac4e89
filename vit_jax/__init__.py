"""vit_jax: Vision Transformers in JAX/Flax, from a laptop CPU to a TPU pod.

Folders are the concerns, lowest layer first (imports only go down; tests/test_layout.py):
config, runtime, models, data, checkpoints, evaluators, training, efficiency, study. The modules at
this level (train, evaluate, convert, bench, sweep, report) are thin `python -m` entry points
sharing cli.py; library code never imports them.
"""
