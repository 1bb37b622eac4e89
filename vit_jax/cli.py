"""What the command-line entry points share: flags, process start-up, the one exit-code-2 path.

Each `python -m vit_jax.<program>` module defines its own flags and a `main(argv)`, then calls
`cli.run(main)`. Bad input raises vit_jax.config.BadInputError before anything is compiled; `run`
prints its message alone (no traceback) and exits with code 2.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Callable, Sequence

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from vit_jax.config import BadInputError
from vit_jax.runtime import cpu
from vit_jax.runtime import distributed
from vit_jax.runtime import logs

EXIT_BAD_INPUT = 2


@dataclasses.dataclass(frozen=True)
class RunFlags:
  """Flags of the programs that run a config on devices (train, evaluate, bench)."""
  config: flags.FlagHolder
  workdir: flags.FlagHolder
  coordinator_address: flags.FlagHolder
  num_processes: flags.FlagHolder
  process_id: flags.FlagHolder


@functools.cache
def run_flags() -> RunFlags:
  """Defines the RunFlags once per process (absl flags can only be defined once)."""
  return RunFlags(
      config=config_flags.DEFINE_config_file(
          "config", None, "Experiment config file, e.g. configs/quickstart.py:patch=7.",
          lock_config=True),
      workdir=flags.DEFINE_string(
          "workdir", None, "Directory for checkpoints and metrics (local or gs://...)."),
      coordinator_address=flags.DEFINE_string(
          "coordinator_address", None, "host:port of process 0, for multi-process runs started "
          "by hand (TPU pods and SLURM are detected automatically)."),
      num_processes=flags.DEFINE_integer(
          "num_processes", None, "Number of processes (with --coordinator_address)."),
      process_id=flags.DEFINE_integer(
          "process_id", None, "This process's index (with --coordinator_address)."))


def required_config() -> ml_collections.ConfigDict:
  """The parsed --config, or BadInputError if it was not given."""
  config = run_flags().config.value
  if config is None:
    raise BadInputError("--config is required, e.g. --config=configs/quickstart.py.")
  return config


def start_process() -> None:
  """What a program that runs on devices does first: readable logs, the CPU defaults (before
  anything touches a device: XLA reads its flags once), multi-process start-up."""
  logs.quiet_library_logs()
  cpu.apply_cpu_defaults()
  f = run_flags()
  distributed.initialize(f.coordinator_address.value, f.num_processes.value, f.process_id.value)


def no_positional_args(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")


def run(main: Callable[[Sequence[str]], None], *, on_devices: bool = False) -> None:
  """`app.run(main)`, starting the process first when `on_devices`; BadInputError exits 2."""
  def checked_main(argv: Sequence[str]) -> None:
    try:
      if on_devices:
        start_process()
      main(argv)
    except BadInputError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(EXIT_BAD_INPUT)
  app.run(checked_main)
