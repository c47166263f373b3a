"""calmerge: measure the alignment tax and buy it back by merging weights."""

__version__ = "0.1.0"
