"""Built-in datamodules, installed as ``mlr_bench.datamodules`` and registered as entry points."""
