"""``python -m dashboards``: serve the Pareto-front browser and the Explain view for an MLflow store."""

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboards",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI of the sweeps (default: MLflow's own, sqlite:///mlflow.db here)",
    )
    parser.add_argument(
        "--mlflow-ui-url",
        default=None,
        help="where the MLflow UI serves, for the links to runs (default: the tracking URI if it is "
        "a server, else http://127.0.0.1:5000 as `mlflow ui` serves)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the app to the network")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image file accepted")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="largest image accepted, in megapixels")
    parser.add_argument(
        "--max-queue",
        type=int,
        default=16,
        help="requests that may wait while one runs (one at a time: explanations share the models)",
    )
    args = parser.parse_args(argv)
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0 or args.max_queue < 1:
        parser.error("--max-upload-mb and --max-megapixels must be > 0, --max-queue >= 1")

    from dashboards.app import Limits, build_app
    from dashboards.store import DashboardError, SweepStore
    from nsde_ray.logs import configure, result

    configure()

    store = SweepStore(args.tracking_uri, ui_url=args.mlflow_ui_url)
    try:
        store.check_reachable()
    except DashboardError as err:
        parser.exit(2, f"python -m dashboards: error: {err}\n")
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
        max_queue=args.max_queue,
    )
    result(f"dashboards for {store.display_uri} on http://{args.host}:{args.port}")
    # Gradio's own cap stops a runaway upload before it fills the disk; ours gives the clear message.
    build_app(store, limits).launch(
        server_name=args.host,
        server_port=args.port,
        show_error=True,
        max_file_size=int(4 * limits.max_upload_bytes) + 2**20,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
