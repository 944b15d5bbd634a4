"""nsde-ray: ResNets trained as discretised neural SDEs, for attributions that are sharper and more robust.

The README's code map names each module's concept. Entry points: ``python -m
sweeps.accuracy_vs_robustness`` (:mod:`nsde_ray.cli`) and ``python -m sweeps.paper_tables``
(:mod:`nsde_ray.paper_tables`).
"""

__version__ = "0.1.0"
