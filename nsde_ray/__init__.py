"""nsde-ray: ResNets trained as discretised neural SDEs, for attributions that are sharper and more robust.

Modules: :mod:`nsde_ray.config` (typed, validated configuration), :mod:`nsde_ray.models`
(stochastic ResNets and their noise), :mod:`nsde_ray.data` (data sets), :mod:`nsde_ray.train`
(one trial's DDP training under Ray Train), :mod:`nsde_ray.cli` (the main command's flags).
"""

__version__ = "0.1.0"
