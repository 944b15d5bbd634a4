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

    A checkpoint is written to a hidden temporary folder first and then moved into place, so a
    crash mid-write never leaves a partial checkpoint where :meth:`latest` looks; the next save
    removes such leftovers. The newest ``keep`` are kept.
    """

    def __init__(self, storage_path: str, name: str, keep: int = 2) -> None:
        self.filesystem, root = resolve_filesystem(storage_path)
        self.root = f"{root.rstrip('/')}/{name}"
        self.keep = keep

    def save(self, state: dict, metrics: dict):
        """Write ``state`` (``torch.save``-able tensors and plain values) as the checkpoint after
        ``metrics["epoch"]`` epochs, with ``metrics`` (JSON values); returns it as a ``ray.train.Checkpoint``."""
        import ray.train

        epoch = int(metrics["epoch"])
        target = f"{self.root}/checkpoint_epoch_{epoch:06d}"
        temporary = f"{self.root}/.checkpoint_epoch_{epoch:06d}.{os.getpid()}.tmp"
        self.filesystem.create_dir(self.root, recursive=True)
        with tempfile.TemporaryDirectory() as local:
            torch.save(state, os.path.join(local, CHECKPOINT_FILE))
            with open(os.path.join(local, METRICS_FILE), "w") as handle:
                json.dump(metrics, handle)
            self._delete(temporary)
            self.filesystem.create_dir(temporary, recursive=True)
            for file_name in (CHECKPOINT_FILE, METRICS_FILE):
                pyarrow.fs.copy_files(os.path.join(local, file_name), f"{temporary}/{file_name}",
                                      source_filesystem=pyarrow.fs.LocalFileSystem(),
                                      destination_filesystem=self.filesystem)
        self._delete(target)
        self.filesystem.move(temporary, target)
        for _, old in self._checkpoints()[:-self.keep]:
            self._delete(old)
        for entry in self._entries():  # what a crashed attempt left mid-write (one process writes a run)
            if entry.base_name.startswith(".checkpoint_epoch_"):
                self._delete(entry.path)
        return ray.train.Checkpoint(target, filesystem=self.filesystem)

    def latest(self):
        """The newest checkpoint as a ``ray.train.Checkpoint``, or None if the run has none yet."""
        import ray.train

        found = self._checkpoints()
        return ray.train.Checkpoint(found[-1][1], filesystem=self.filesystem) if found else None

    def latest_metrics(self) -> dict:
        """The metrics reported with the newest checkpoint; empty if the run has none yet."""
        found = self._checkpoints()
        if not found:
            return {}
        with self.filesystem.open_input_stream(f"{found[-1][1]}/{METRICS_FILE}") as handle:
            return json.loads(handle.read().decode())

    def _checkpoints(self) -> list[tuple[int, str]]:
        """(epoch, folder) of every complete checkpoint, oldest first."""
        found = []
        for entry in self._entries():
            match = _CHECKPOINT_DIR.match(entry.base_name)
            if match and entry.type == pyarrow.fs.FileType.Directory:
                found.append((int(match.group(1)), entry.path))
        return sorted(found)

    def _entries(self) -> list[pyarrow.fs.FileInfo]:
        return self.filesystem.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))

    def _delete(self, folder: str) -> None:
        if self.filesystem.get_file_info(folder).type != pyarrow.fs.FileType.NotFound:
            self.filesystem.delete_dir(folder)
