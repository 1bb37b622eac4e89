"""Efficiency studies of training programs: benchmarks of the real step, projections to hardware we
don't have. Built on vit_jax.training; analytic FLOPs are vit_jax.models.flops and device peaks
vit_jax.runtime.hardware."""
