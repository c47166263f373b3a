"""calmerge.sweep"""
