"""calmerge.io"""
