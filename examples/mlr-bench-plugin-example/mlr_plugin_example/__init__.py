"""An example mlr-bench plugin (see this folder's README.md)."""

from mlr_plugin_example.method import TextProbe

__all__ = ["TextProbe"]
