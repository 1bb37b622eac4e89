"""The one exception for bad input: entry points turn it into one message and exit code 2."""
import contextlib
from typing import Iterator


class BadInputError(ValueError):
  """A bad config value, flag, dataset or input file, found before anything is compiled.

  Its message names the bad value and the fix; `vit_jax.cli` prints it alone (no traceback).
  """


@contextlib.contextmanager
def bad_input() -> Iterator[None]:
  """Reports the ValueError / FileNotFoundError of the checks inside as BadInputError.

  Wrap only what runs before compilation (config checks, opening data, reading an init checkpoint):
  an error there is the user's input; later ones are bugs and keep their traceback.
  """
  try:
    yield
  except BadInputError:
    raise
  except (ValueError, FileNotFoundError) as e:
    raise BadInputError(str(e)) from e
