"""Readable logs: our progress lines, not every library's INFO messages."""
import logging as std_logging

from absl import logging


class _LibraryInfoFilter(std_logging.Filter):
  """Drops the INFO chatter of Orbax, TFDS and grain (each save logs ~30 lines); keeps warnings."""
  _LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/grain/")

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in self._LIBRARIES)


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())
