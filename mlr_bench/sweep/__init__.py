"""``mlr-bench sweep``: equal-budget hyperparameter tuning of one method on one dataset.

Kept import-light: methods import :mod:`mlr_bench.sweep.space` to declare their search
spaces, and Optuna is imported only when a sweep runs (``mlr_bench.sweep.command``).
"""
