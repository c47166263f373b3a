"""The built-in model organism: a small base/aligned pair that shows the alignment tax.

`build_organism()` trains every stage with calmerge's own code (a synthetic world, a
word-level tokenizer, Llama pretraining, SFT, DPO toward confident and toward hedged answers)
and caches the checkpoints by a content hash.
"""

from calmerge.organism.build import OrganismPaths, build_organism, cache_root
from calmerge.organism.recipe import Recipe, default_recipe, tiny_recipe

__all__ = ["OrganismPaths", "Recipe", "build_organism", "cache_root", "default_recipe", "tiny_recipe"]
