"""dmreg: multimodal raster co-registration.

The one entry point most callers need is :func:`dmreg.pipeline.register`.
"""

__version__ = "0.1.0"
