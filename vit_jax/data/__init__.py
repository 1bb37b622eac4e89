"""Input pipeline: sources (tfds / image folder / bundled digits), pp ops, grain pipeline, mixup.

Entry points: `pipeline.make_train_iterator`, `pipeline.make_eval_iterable`, `pipeline.check_ready`,
`mixup.mix`; the throughput benchmark is `python -m vit_jax.data.bench`.
"""
