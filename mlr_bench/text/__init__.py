"""Text corpora and labelling for text-only training."""

from mlr_bench.text.labeler import SynonymLabeler, plural_forms

__all__ = ["SynonymLabeler", "plural_forms"]
