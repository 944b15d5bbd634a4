"""Files on a run's storage: a local or NFS path, or a pyarrow file system URI (``s3://``, ``gs://``, ...).

:func:`write_atomically`, :func:`read_text` and :func:`folders_holding` are how a run's state file
(:mod:`nsde_ray.lifecycle`) is written, read and found.

:class:`CheckpointStore` keeps the per-epoch checkpoints of a training run that does not go
through Ray Train (:func:`nsde_ray.train.fit_single_worker`), in that run's own folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time

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


def write_atomically(folder: str, name: str, text: str) -> None:
    """Write ``text`` to ``folder/name`` (a local path or a URI), atomically where the storage allows.

    On a local or NFS path it goes to a temporary file in the same folder, is flushed to disk, then
    renamed over the old one, so a crash or a full disk leaves the previous file whole. On other
    pyarrow file systems (``s3://`` ...) it is written to a temporary name and moved (S3 publishes an
    object whole); a file system that cannot move files is written directly, where an interrupted
    write can truncate the file.
    """
    payload = text.encode()
    filesystem, root = resolve_filesystem(folder)
    target = f"{root}/{name}"
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        os.makedirs(root, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
        return
    filesystem.create_dir(root, recursive=True)
    temporary = f"{root}/.{name}.{os.getpid()}.{time.time_ns()}.tmp"
    with filesystem.open_output_stream(temporary) as handle:
        handle.write(payload)
    try:
        filesystem.move(temporary, target)
    except NotImplementedError:  # pyarrow's ArrowNotImplementedError too: write in place
        with filesystem.open_output_stream(target) as handle:
            handle.write(payload)
        filesystem.delete_file(temporary)


def read_text(folder: str, name: str) -> str | None:
    """The text of ``folder/name`` (a local path or a URI); None if there is no such file."""
    filesystem, root = resolve_filesystem(folder)
    if filesystem.get_file_info(f"{root}/{name}").type == pyarrow.fs.FileType.NotFound:
        return None
    with filesystem.open_input_stream(f"{root}/{name}") as handle:
        return handle.read().decode()


def folders_holding(root: str, name: str) -> list[str]:
    """The names of the folders directly in ``root`` that hold a file ``name``, sorted; none if ``root`` does not
    exist. Raises OSError (or ValueError for a bad URI) if it cannot be listed."""
    filesystem, base = resolve_filesystem(root)
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
    return sorted(
        os.path.basename(e.path)
        for e in entries
        if filesystem.get_file_info(f"{e.path}/{name}").type == pyarrow.fs.FileType.File
    )


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
