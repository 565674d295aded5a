"""Dataset loading. A top-level package because both the CLI and the GUI worker
need it and it depends on neither renderer nor models."""
from loaders.llff import load_scene
from loaders.scene import DataError, Scene, Split

__all__ = ["DataError", "Scene", "Split", "load_scene"]
