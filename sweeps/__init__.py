"""Runnable entry points (``python -m sweeps.<name>``), thin layers over :mod:`nsde_ray`."""
