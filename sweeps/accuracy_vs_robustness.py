"""``python -m sweeps.accuracy_vs_robustness``: the main job. ``--help`` lists the flags."""

import sys

from nsde_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
