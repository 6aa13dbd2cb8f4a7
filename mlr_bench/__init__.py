"""mlr-bench: text-only multi-label image recognition with CLIP, as interchangeable methods."""

from mlr_bench.datamodule import MLRDataModule
from mlr_bench.method import FeatureMethod, MLRMethod

__version__ = "0.1.0"
__all__ = ["FeatureMethod", "MLRDataModule", "MLRMethod", "__version__"]
