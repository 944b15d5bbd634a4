"""The dashboards web app (Gradio): a sweep's Pareto front, and ExplainIt!-style side-by-side attributions.

Pareto view: pick a sweep; its finished trials as accuracy against sensitivity and against SIC,
the front highlighted; pick a trial for its params, metrics, attribution grid and MLflow page.
Explain view: upload a JPEG or PNG (or pick one of the sweep's evaluation images); two trained
models from the sweep (by default the plain ResNet and the front's least sensitive neural SDE)
each show their top-5 prediction, their attribution map over the image and its max-sensitivity.

Concurrency: one event at a time per app (``queue(default_concurrency_limit=1)``), the others
waiting in a queue of at most ``Limits.max_queue`` (beyond it Gradio turns requests away with a
"queue is full" message). Explanations must not overlap: the models are shared by every user, and
Captum's DeepLIFT and DeepSHAP register hooks on a model's modules while they run, so two
explanations on one model at once would see each other's hooks. One explanation takes seconds on a
CPU; run more app processes (behind a load balancer) for more users.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import gradio as gr
import numpy as np
from PIL import Image

from dashboards.store import DashboardError, SweepStore, default_pair
from dashboards.uploads import UploadError, read_image
from nsde_ray import plots
from nsde_ray.attribution import AttributionError
from nsde_ray.explain import explain_image, prepare_image
from nsde_ray.front_table import table_cell, table_columns
from nsde_ray.names import METHOD_LABELS, METHODS
from nsde_ray.tracking import front_url

METHOD_BY_LABEL = {METHOD_LABELS[method]: method for method in METHODS}
DISPLAY_SIZE = 256  # pixels; small inputs (digits are 32 px) are shown enlarged, nearest-neighbour

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What an upload may be, and how much work one explanation may take."""

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    n_steps: int = 32
    n_perturbations: int = 10
    max_queue: int = 16  # requests waiting for the one that runs; more are turned away


def build_app(store: SweepStore, limits: Limits = Limits()) -> gr.Blocks:
    with gr.Blocks(title="nsde-ray dashboards", analytics_enabled=False) as app:
        gr.Markdown(f"# nsde-ray: accuracy vs attribution robustness\nMLflow store: `{store.display_uri}`")
        sweep_box = gr.Dropdown(label="Sweep (MLflow experiment)", choices=[], elem_id="sweep")
        load_status = gr.Markdown(elem_id="load-status")
        with gr.Tab("Pareto front"):
            summary = gr.Markdown(elem_id="front-summary")
            plot = gr.Plot(label="Pareto front", elem_id="pareto-plot")
            table = gr.Dataframe(
                headers=list(table_columns()),
                interactive=False,
                label="Finished configurations (objectives: mean ± SE over seeds)",
            )
            trial_box = gr.Dropdown(label="Trial", choices=[], elem_id="trial")
            trial_link = gr.Markdown(elem_id="trial-link")
            with gr.Row():
                params_view = gr.JSON(label="Params")
                metrics_view = gr.JSON(label="Final metrics")
            grid_view = gr.Image(
                label="Attribution grid (input | one map per method)",
                type="filepath",
                elem_id="trial-grid",
                interactive=False,
            )
        with gr.Tab("Explain"):
            gr.Markdown(
                "Upload a JPEG or PNG (any size, RGB or grey; the centre square is resized to the "
                "models' input), or pick one of the sweep's evaluation images."
            )
            with gr.Row():
                upload = gr.File(label="Image", type="filepath", elem_id="upload")
                gallery = gr.Gallery(
                    label="Evaluation images", columns=6, height=160, allow_preview=False, elem_id="gallery"
                )
            with gr.Row():
                left_box = gr.Dropdown(label="Left model", choices=[], elem_id="left-model")
                right_box = gr.Dropdown(label="Right model", choices=[], elem_id="right-model")
                method_box = gr.Radio(list(METHOD_BY_LABEL), value="IG", label="Attribution method", elem_id="method")
            explain_status = gr.Markdown(elem_id="explain-status")
            sides = []
            with gr.Row():
                for side in ("left", "right"):
                    with gr.Column():
                        sides.append(
                            (
                                gr.Image(
                                    label=f"{side} model: attribution",
                                    type="numpy",
                                    interactive=False,
                                    elem_id=f"{side}-attribution",
                                ),
                                gr.Label(num_top_classes=5, label="top-5 prediction", elem_id=f"{side}-top5"),
                                gr.Markdown(elem_id=f"{side}-sensitivity"),
                            )
                        )
        image_path = gr.State(None)
        gallery_paths = gr.State([])
        side_outputs = [component for side in sides for component in side]

        def list_sweeps():
            try:
                labels = [sweep.label for sweep in store.sweeps()]
            except DashboardError as err:
                return gr.update(choices=[], value=None), f"**Error:** {err}"
            if not labels:
                return gr.update(choices=[], value=None), (
                    "No sweeps in this store yet: run `python -m sweeps.accuracy_vs_robustness` first."
                )
            return gr.update(choices=labels, value=labels[0]), ""

        def show_sweep(label):
            empty = (gr.update(choices=[], value=None),) * 3
            if not label:
                return ("", None, [], *empty, [], [])
            try:
                sweep = store.sweep(label)
                report = store.assessment(sweep)
            except DashboardError as err:
                return (f"**Error:** {err}", None, [], *empty, [], [])
            rows = report.rows
            front = sum(row["pareto_front"] for row in rows)
            text = (
                f"**{len(rows)} finished configurations, {front} on the Pareto front** (mean ± 1 SE over seeds). "
                f"[The front in MLflow's UI]({front_url(sweep.experiment_id, store.ui_url)}).\n\n"
                + report.modes.to_markdown()
            )
            choices = [(_trial_label(row), row["run_id"]) for row in rows]
            left, right = default_pair(rows)
            gallery = store.gallery(right or left) if (right or left) else []
            table_rows = [[table_cell(row, column) for column in table_columns()] for row in rows]
            return (
                text,
                plots.pareto_figure(rows),
                table_rows,
                gr.update(choices=choices, value=choices[0][1] if choices else None),
                gr.update(choices=choices, value=left),
                gr.update(choices=choices, value=right),
                gallery,
                gallery,
            )

        def show_trial(label, run_id):
            if not run_id:
                return "", None, None, None
            try:
                sweep = store.sweep(label)
                run = store.run(run_id)
            except DashboardError as err:
                return f"**Error:** {err}", None, None, None
            grid = store.grid(run_id)
            link = f"[Open this run in the MLflow UI]({store.run_url(sweep, run_id)})"
            if grid is None:
                link += " · this run logged no attribution grid"
            return link, dict(sorted(run.data.params.items())), dict(sorted(run.data.metrics.items())), grid

        def pick_gallery(paths, event: gr.SelectData):
            return paths[event.index]

        def explain(path, left_run, right_run, method_label):
            blank = [None, None, ""] * 2
            if not path:
                return ["Upload an image or pick one from the gallery.", *blank]
            try:
                image = read_image(path, limits.max_upload_bytes, limits.max_pixels)
                results = []
                for run_id in (left_run, right_run):
                    if not run_id:
                        raise DashboardError("choose two models")
                    results.extend(_explain_with(store.model(run_id), image, METHOD_BY_LABEL[method_label], limits))
            except (UploadError, DashboardError, AttributionError) as err:
                return [f"**Error:** {err}", *blank]
            except Exception as err:  # keep serving; the log has the traceback
                log.exception("explanation failed")
                return [f"**Error:** the explanation failed ({type(err).__name__}: {err})", *blank]
            return [f"{image.width}x{image.height} {image.mode} image, {method_label}.", *results]

        app.load(list_sweeps, None, [sweep_box, load_status])
        sweep_box.change(
            show_sweep, sweep_box, [summary, plot, table, trial_box, left_box, right_box, gallery, gallery_paths]
        )
        trial_box.change(show_trial, [sweep_box, trial_box], [trial_link, params_view, metrics_view, grid_view])
        explain_inputs = [image_path, left_box, right_box, method_box]
        upload.upload(lambda path: path, upload, image_path).then(
            explain, explain_inputs, [explain_status, *side_outputs]
        )
        gallery.select(pick_gallery, gallery_paths, image_path).then(
            explain, explain_inputs, [explain_status, *side_outputs]
        )
        for control in (left_box, right_box, method_box):
            control.input(explain, explain_inputs, [explain_status, *side_outputs])
    # One event at a time: Captum's DeepLIFT/DeepSHAP hooks mutate the shared models (see the module docstring).
    return app.queue(default_concurrency_limit=1, max_size=limits.max_queue)


def _explain_with(bundle, image: Image.Image, method: str, limits: Limits) -> list:
    """(overlay image, top-5 {class: probability}, sensitivity text) of one model."""
    started = time.perf_counter()
    pixels = prepare_image(image, bundle)
    result = explain_image(bundle, pixels, method, n_steps=limits.n_steps, n_perturbations=limits.n_perturbations)
    picture = np.round(plots.overlay(pixels, result.attribution) * 255).astype(np.uint8)
    if picture.shape[0] < DISPLAY_SIZE:
        picture = np.asarray(Image.fromarray(picture).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.NEAREST))
    if math.isnan(result.sensitivity):
        sensitivity = (
            f"Max-sensitivity: **n/a**: each of the {limits.n_perturbations} perturbations changed the prediction."
        )
    else:
        sensitivity = (
            f"Max-sensitivity of this map: **{result.sensitivity:.4f}** (lower is more robust; "
            f"{result.kept_perturbations} of {limits.n_perturbations} perturbations kept the prediction)"
        )
    config = bundle.config
    sensitivity += (
        f"  \n{config.model.arch}, noise {config.noise.mode}, sigma {config.noise.sigma:g} · "
        f"{time.perf_counter() - started:.1f} s"
    )
    return [picture, dict(result.top), sensitivity]


def _trial_label(row: dict) -> str:
    star = "★ " if row["pareto_front"] else ""
    sigma = row.get("noise_sigma", "")
    return (
        f"{star}{row['trial_id']} · {row.get('noise_mode', '')}"
        f"{f' σ={float(sigma):.2f}' if sigma not in ('', None) else ''} · acc {row['val_accuracy']:.3f} · "
        f"sens {row['sensitivity']:.3f} · sic {row['sic']:.3g}"
    )
