"""calmerge.results"""
