"""Footprints, georeferencing mappings between rasters, and tiling plans."""
