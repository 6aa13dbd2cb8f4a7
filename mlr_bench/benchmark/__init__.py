"""``mlr-bench benchmark``: run a (method × dataset × seed) matrix of ``train`` runs, resumably,
and report it as tables, a leaderboard with published numbers beside it, and plots."""

from mlr_bench.benchmark.command import BenchmarkResult, benchmark_main, run_benchmark
from mlr_bench.benchmark.matrix import Cell, CellSettings

__all__ = ["BenchmarkResult", "Cell", "CellSettings", "benchmark_main", "run_benchmark"]
