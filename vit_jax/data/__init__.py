"""Input pipeline: sources (tfds / image folder / bundled digits), pp ops, grain pipeline, mixup.

The API: `pipeline.make_train_iterator`, `pipeline.make_eval_iterable`, `pipeline.check_ready`,
`pipeline.example_shape`, `mixup.mix`; the throughput benchmark is `python -m vit_jax.data_bench`.
"""
