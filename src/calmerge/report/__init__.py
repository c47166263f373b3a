"""calmerge.report"""
