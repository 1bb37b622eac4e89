"""What the command-line entry points share: flags, process start-up, the one exit-code-2 path.

Each `python -m vit_jax.<program>` module defines its own flags and a `main(argv)`, then calls
`cli.run(main)`. Bad input raises vit_jax.config.BadInputError before anything is compiled; `run`
prints its message alone (no traceback) and exits with code 2.

This module imports neither JAX nor TensorFlow, and neither do train and evaluate before their
flags and config are checked: a mistyped flag, a config file that does not load and a bad
`--config.x=` override are answered in about a second. The programs that never touch a device
(sweep, report) never load them.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Callable, Sequence

from absl import app, flags
import ml_collections
from ml_collections import config_flags

from vit_jax.config import BadInputError
from vit_jax.runtime import cpu, logs

# Exit codes of the entry points (README): 0 done, 1 a bug (traceback), and
EXIT_BAD_INPUT = 2  # bad input: one message, nothing compiled or written
EXIT_STOPPED = 3  # stopped by a signal after saving a checkpoint: rerun to resume
EXIT_DIVERGED = 4  # non-finite loss or gradients: nothing from that step on was saved
EXIT_PEER_LOST = 5  # another process of a multi-process run died: rerun all to resume
EXIT_STALLED = 6  # this process made no progress for --stall_timeout_seconds: rerun to resume
PEER_TIMEOUT_SECONDS = 120  # --peer_timeout_seconds's default
STALL_TIMEOUT_SECONDS = 3600  # --stall_timeout_seconds's default


@dataclasses.dataclass(frozen=True)
class RunFlags:
  """Flags of the programs that run a config on devices (train, evaluate, bench)."""
  config: flags.FlagHolder
  workdir: flags.FlagHolder
  coordinator_address: flags.FlagHolder
  num_processes: flags.FlagHolder
  process_id: flags.FlagHolder
  peer_timeout_seconds: flags.FlagHolder
  stall_timeout_seconds: flags.FlagHolder


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
          "process_id", None, "This process's index (with --coordinator_address)."),
      peer_timeout_seconds=flags.DEFINE_integer(
          "peer_timeout_seconds", PEER_TIMEOUT_SECONDS,
          "Multi-process runs: once another process has not been heard from for this many "
          "seconds (killed, crashed, its host lost), this one prints one message naming it and "
          f"exits with code {EXIT_PEER_LOST} instead of waiting in its next collective.",
          lower_bound=1),
      stall_timeout_seconds=flags.DEFINE_integer(
          "stall_timeout_seconds", STALL_TIMEOUT_SECONDS,
          "Training: once one part of a step (reading its batch, running it, an eval, a "
          "checkpoint save) has taken this many seconds, this process prints where it is stuck "
          f"and exits with code {EXIT_STALLED} (rerun to resume) instead of hanging until its "
          "job's time limit. 0: wait forever.", lower_bound=0))


def required_config() -> ml_collections.ConfigDict:
  """The parsed --config, or BadInputError if it was not given or could not be loaded."""
  config = run_flags().config.value
  try:
    config is None or config.keys()  # A config file that failed to load raises on first use.
  except OSError as e:
    raise BadInputError(f"--config: {_one_line(str(e))}") from e
  if config is None:
    raise BadInputError("--config is required, e.g. --config=configs/quickstart.py.")
  return config


def start_process() -> None:
  """What a program that runs on devices does first: readable logs, the CPU defaults (before
  anything touches a device: XLA reads its flags once), multi-process start-up."""
  # Import JAX: only the programs that run on devices.
  from vit_jax.runtime import distributed, stall
  logs.quiet_library_logs()
  cpu.apply_cpu_defaults()
  f = run_flags()
  distributed.initialize(f.coordinator_address.value, f.num_processes.value, f.process_id.value,
                         peer_timeout_seconds=f.peer_timeout_seconds.value,
                         peer_lost_exit_code=EXIT_PEER_LOST)
  stall.configure(f.stall_timeout_seconds.value, EXIT_STALLED)


def no_positional_args(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise BadInputError(f"unexpected arguments {argv[1:]}: every setting is a --flag, e.g. "
                        "--config=configs/quickstart.py --workdir=/tmp/run.")


def _one_line(text: str) -> str:
  """A library's multi-line error (ml_collections wraps a config file's traceback) as one line:
  its first line and, after a traceback, the exception it ended with."""
  text = text.strip()
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # A quoted repr (KeyError's).
    text = text[1:-1].replace("\\n", "\n").replace("\\'", "'")
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if any(line.startswith("Traceback (most recent call last)") for line in lines):
    return f"{lines[0].rstrip(':')} {lines[-1]}"
  return " ".join(lines)


def _exit_bad_input(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def _parse_flags(argv: Sequence[str]) -> Sequence[str]:
  """absl's flag parsing, with every parse error as one message and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit_bad_input(_one_line(str(e)))
  except AttributeError as e:  # ml_collections: an override names no field of the config.
    _exit_bad_input(f"a --config.<field>=... override names no field of the config: "
                    f"{_one_line(str(e))}")


def run(main: Callable[[Sequence[str]], None], *, on_devices: bool = False) -> None:
  """`app.run(main)`; BadInputError exits 2. With `on_devices` (a program that runs --config on
  devices), the arguments and the config are checked and the process started (start_process)
  before `main`."""
  def checked_main(argv: Sequence[str]) -> None:
    try:
      if on_devices:  # What can be checked before JAX starts is, so it is answered at once.
        no_positional_args(argv)
        required_config()
        start_process()
      main(argv)
    except BadInputError as e:
      _exit_bad_input(str(e))
  app.run(checked_main, flags_parser=_parse_flags)
