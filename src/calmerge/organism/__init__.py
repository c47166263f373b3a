"""calmerge.organism"""
