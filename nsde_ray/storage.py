"""Files on a run's storage: a local or NFS path, or a pyarrow file system URI (``s3://``, ``gs://``, ...).

:class:`CheckpointStore` keeps the per-epoch checkpoints of a training run that does not go
through Ray Train (:func:`nsde_ray.train.fit_single_worker`), in that run's own folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

import pyarrow.fs
import torch

from nsde_ray.names import CHECKPOINT_FILE

METRICS_FILE = "metrics.json"  # beside the checkpoint file: the report that came with it
_CHECKPOINT_DIR = re.compile(r"^checkpoint_epoch_(\d{6})$")


def resolve_filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(file system, path on it) of a local path or a URI."""
    if "://" not in path:
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(path)
    return pyarrow.fs.FileSystem.from_uri(path)


class CheckpointStore:
    """The checkpoints of one run in ``{storage_path}/{name}/checkpoint_epoch_NNNNNN/`` (NNNNNN: epochs done),
    each its ``checkpoint.pt`` and the metrics reported with it (:data:`METRICS_FILE`).

    The metrics file is written last, and a folder without it is not a checkpoint, so a crash
    mid-write never leaves a partial checkpoint where :meth:`latest` looks (on object stores too,
    which publish each file whole and cannot rename folders). The newest ``keep`` are kept.
    """

    def __init__(
        self, storage_path: str, name: str, keep: int = 2, filesystem: pyarrow.fs.FileSystem | None = None
    ) -> None:
        """``filesystem``: where ``storage_path`` lies, as Ray's ``storage_filesystem``; by default the one
        its form names (a local path, ``s3://...``)."""
        if filesystem is None:
            filesystem, root = resolve_filesystem(storage_path)
        else:
            root = storage_path
        self.filesystem = filesystem
        self.root = f"{root.rstrip('/')}/{name}"
        self.keep = keep

    def save(self, state: dict, metrics: dict):
        """Write ``state`` (``torch.save``-able tensors and plain values) as the checkpoint after
        ``metrics["epoch"]`` epochs, with ``metrics`` (JSON values); returns it as a ``ray.train.Checkpoint``."""
        import ray.train

        target = f"{self.root}/checkpoint_epoch_{int(metrics['epoch']):06d}"
        self._delete(target)  # what a crash left of this epoch's checkpoint
        self.filesystem.create_dir(target, recursive=True)
        with tempfile.TemporaryDirectory() as local:
            torch.save(state, os.path.join(local, CHECKPOINT_FILE))
            with open(os.path.join(local, METRICS_FILE), "w") as handle:
                json.dump(metrics, handle)
            for file_name in (CHECKPOINT_FILE, METRICS_FILE):  # the metrics last: they mark it complete
                pyarrow.fs.copy_files(
                    os.path.join(local, file_name),
                    f"{target}/{file_name}",
                    source_filesystem=pyarrow.fs.LocalFileSystem(),
                    destination_filesystem=self.filesystem,
                )
        for _, old in self._checkpoints()[: -self.keep]:
            self._delete(old)
        return ray.train.Checkpoint(target, filesystem=self.filesystem)

    def latest(self):
        """The newest complete checkpoint as a ``ray.train.Checkpoint``, or None if the run has none yet."""
        import ray.train

        found = self._checkpoints()
        return ray.train.Checkpoint(found[-1][1], filesystem=self.filesystem) if found else None

    def latest_metrics(self) -> dict:
        """The metrics reported with the newest complete checkpoint; empty if the run has none yet."""
        found = self._checkpoints()
        if not found:
            return {}
        with self.filesystem.open_input_stream(f"{found[-1][1]}/{METRICS_FILE}") as handle:
            return json.loads(handle.read().decode())

    def _checkpoints(self) -> list[tuple[int, str]]:
        """(epoch, folder) of every complete checkpoint, oldest first."""
        selector = pyarrow.fs.FileSelector(self.root, allow_not_found=True)
        found = []
        for entry in self.filesystem.get_file_info(selector):
            match = _CHECKPOINT_DIR.match(entry.base_name)
            if (
                match
                and entry.type == pyarrow.fs.FileType.Directory
                and self.filesystem.get_file_info(f"{entry.path}/{METRICS_FILE}").type == pyarrow.fs.FileType.File
            ):
                found.append((int(match.group(1)), entry.path))
        return sorted(found)

    def _delete(self, folder: str) -> None:
        if self.filesystem.get_file_info(folder).type != pyarrow.fs.FileType.NotFound:
            self.filesystem.delete_dir(folder)
