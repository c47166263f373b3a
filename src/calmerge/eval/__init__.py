"""calmerge.eval"""
