"""Raster I/O: opening with clear errors, window reads onto grids, atomic writes."""
