"""calmerge.analysis"""
