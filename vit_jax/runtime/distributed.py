"""Multi-process start-up: `jax.distributed.initialize()` on clusters it configures itself.

TPU pods, SLURM and Open MPI set environment variables from which JAX finds the coordinator and its
own process index; a run started by hand names them (`--coordinator_address` and friends). A
single process starts nothing.
"""
from __future__ import annotations

import os

from absl import logging
import jax


def _cluster_detected() -> bool:
  """True on launchers that jax.distributed.initialize() configures itself (SLURM, TPU pods,
  MPI)."""
  def count(var):
    try:
      return int(os.environ.get(var, "1"))
    except ValueError:
      return 1
  tpu_workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1 or "," in tpu_workers


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts multi-process JAX when asked to (explicit address) or when a cluster is detected."""
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _cluster_detected():
    jax.distributed.initialize()
  else:
    return
  logging.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
