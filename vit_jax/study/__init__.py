"""Studies: sweeps of trials (sweep), where they run (launchers: local, TPU, SLURM), and the report
that compares them (report). Trials are runs of the entry points; their outputs follow
vit_jax.checkpoints.workdir."""
