"""Small world settings shared by the benchmark tests (a cell trains in seconds)."""

TINY = [
    "--data.num_test", "60", "--data.num_val", "30",
    "--data.num_captions", "300", "--data.num_sentences", "200",
]  # fmt: skip

#: A CoMC recipe for the world with one template copy: the cheapest trainable cell.
COMC_TINY = """\
model:
  class_path: mlr_bench.methods.comc.CoMC
  init_args:
    template_copies: 1
data:
  class_path: mlr_bench.datamodules.world.World
"""
