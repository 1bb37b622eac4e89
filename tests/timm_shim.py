"""Imports timm without torchvision (test-only).

timm >= 0.9 imports torchvision at import time (timm.layers: FrozenBatchNorm2d; timm.data:
datasets and transforms) although its ViT / ResNetV2 models never call it, and torchvision from
PyPI replaces the pinned CPU torch with a CUDA one. Unless torchvision is already imported, the
import of timm here sees placeholder `torchvision.*` modules whose every attribute is an inert
class; they are removed from `sys.modules` right after, so nothing else sees them and the real
torchvision (if installed) is never imported by these tests.
"""
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
import types


class _Inert(type):
  """A class whose every (non-dunder) attribute is another inert class."""

  def __getattr__(cls, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Inert(name, (), {})


class _Module(types.ModuleType):

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Inert(name, (), {})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):

  def find_spec(self, fullname, path=None, target=None):
    if fullname == "torchvision" or fullname.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    module = _Module(spec.name)
    module.__path__ = []
    return module

  def exec_module(self, module):
    pass


@contextlib.contextmanager
def _placeholder_torchvision():
  if "torchvision" in sys.modules:
    yield
    return
  finder = _Finder()
  sys.meta_path.insert(0, finder)
  try:
    yield
  finally:
    sys.meta_path.remove(finder)
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]


def import_timm():
  """timm, with its ViT and hybrid model modules loaded."""
  with _placeholder_torchvision():
    timm = importlib.import_module("timm")
    importlib.import_module("timm.models.vision_transformer")
    importlib.import_module("timm.models.vision_transformer_hybrid")
  return timm
