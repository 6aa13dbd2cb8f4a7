"""Built-in methods (installed as ``mlr_bench.methods``, registered through entry points)."""
