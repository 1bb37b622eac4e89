"""What every command-line entry point shares: bad input exits with one message and code 2."""
import functools
import sys
from typing import Callable, Sequence

EXIT_BAD_INPUT = 2


def exit_on_bad_input(main: Callable[[Sequence[str]], None]) -> Callable[[Sequence[str]], None]:
  """Wraps an absl `main`: a ValueError / FileNotFoundError becomes one message and exit code 2.

  The checks that raise them run before anything is compiled, so a typo costs seconds, not a job.
  """
  @functools.wraps(main)
  def checked_main(argv: Sequence[str]) -> None:
    try:
      main(argv)
    except (ValueError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(EXIT_BAD_INPUT)
  return checked_main
