"""calmerge.merge"""
