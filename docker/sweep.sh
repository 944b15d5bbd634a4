#!/bin/sh
# Start the sweep $SWEEP_NAME with its Tune state in $SWEEP_STORAGE, or resume it when that state exists:
# the entry point of the KubeRay RayJob (a retry after the head was lost resumes) and of `ray exec` on a
# cluster-launcher cluster. Further arguments go to python -m sweeps.accuracy_vs_robustness.
set -eu
: "${SWEEP_NAME:?set SWEEP_NAME, the sweep (and MLflow experiment) name}"
: "${SWEEP_STORAGE:?set SWEEP_STORAGE, durable storage shared by all nodes: s3://bucket/prefix or an NFS path}"
if python -c 'import os, sys
from nsde_ray.lifecycle import sweep_exists
sys.exit(0 if sweep_exists(os.environ["SWEEP_STORAGE"], os.environ["SWEEP_NAME"]) else 1)'; then
    echo "[nsde-ray] sweep $SWEEP_NAME found in $SWEEP_STORAGE: resuming it" >&2
    set -- --resume "$@"
fi
exec python -m sweeps.accuracy_vs_robustness --name "$SWEEP_NAME" --storage "$SWEEP_STORAGE" "$@"
