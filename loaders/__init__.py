"""Dataset loading. A top-level package because both the CLI and the GUI worker
need it and it depends on neither renderer nor models.

The names below load on first use, so that a light submodule (loaders.sfm_choices, which
the CLI's --help reads) does not pull in torch through the loaders."""
import importlib

_LAZY = {"load_scene": "loaders.llff", "DataError": "loaders.scene", "Scene": "loaders.scene",
         "Split": "loaders.scene"}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'loaders' has no attribute {name!r}")
