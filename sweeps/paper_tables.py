"""``python -m sweeps.paper_tables``: the papers' tables as a resumable grid. ``--help`` lists the flags."""

import sys

from nsde_ray.paper_tables import main

if __name__ == "__main__":
    sys.exit(main())
