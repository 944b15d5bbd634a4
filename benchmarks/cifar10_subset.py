"""Make the CIFAR-10 subset of RESULTS.md's CPU runs from the CIFAR-10 JPEG archive, as an image folder.

The archive, ``cifar10-jpeg.tgz``, holds CIFAR-10 as JPEG files in class folders, ``train/<class>/*.jpg``
(5,000 per class) and ``test/<class>/*.jpg`` (1,000 per class). Its SHA-256 must be
:data:`ARCHIVE_SHA256`; any other archive is refused. The subset, per class:

- ``train/<class>/``: 1,000 images of the archive's ``train/<class>/``;
- ``val/<class>/``: the next 200 images of the same draw (disjoint from ``train/``);
- ``test/<class>/``: 200 images of the archive's ``test/<class>/``.

10,000 training, 2,000 validation and 2,000 test images in all, for ``--dataset imagefolder
--data-dir OUT``. The choice is stratified by class and seeded by the class name: the class's file
names, sorted, are drawn from with ``random.Random(<class name>).sample`` (a string seed is hashed
with SHA-512 by Python, so the draw is the same on every machine and Python 3 version), once for
train + val and once, with a fresh generator, for test. Files are copied byte for byte, with the
archive's modification times.

Idempotent: the output folder is written under a temporary name and renamed into place when
complete, with ``subset.json`` (the archive's checksum, the counts and the chosen files). A second
run with the same archive and counts finds the folder complete and changes nothing; a folder made
otherwise is refused, not overwritten.

    python benchmarks/cifar10_subset.py --archive /path/to/cifar10-jpeg.tgz --out /work/data/cifar10_sub
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time

ARCHIVE_SHA256 = "0bfcb68717a0ecb0d51ed61034906a773d48d424d94b766a46d7d1c55702a4d9"
MANIFEST = "subset.json"
SOURCE_SPLITS = ("train", "test")


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_images(archive: str) -> dict[str, dict[str, list[str]]]:
    """{source split: {class: sorted file names}} of the archive's ``<split>/<class>/<name>.jpg`` files."""
    images: dict[str, dict[str, list[str]]] = {split: {} for split in SOURCE_SPLITS}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] in SOURCE_SPLITS and parts[2].endswith(".jpg"):
                images[parts[0]].setdefault(parts[1], []).append(parts[2])
    return {split: {cls: sorted(names) for cls, names in classes.items()} for split, classes in images.items()}


def choose(images: dict[str, dict[str, list[str]]], train: int, val: int, test: int) -> dict[str, str]:
    """{archive path: subset path} of the seeded, class-stratified choice (see the module docstring)."""
    classes = sorted(images["train"])
    if classes != sorted(images["test"]):
        raise SystemExit(f"the archive's train/ and test/ classes differ: {classes} vs {sorted(images['test'])}")
    chosen = {}
    for cls in classes:
        for source, targets in (("train", (("train", train), ("val", val))), ("test", (("test", test),))):
            names = images[source][cls]
            wanted = sum(n for _, n in targets)
            if wanted > len(names):
                raise SystemExit(f"{source}/{cls} has {len(names)} images, {wanted} asked for")
            drawn = random.Random(cls).sample(names, wanted)
            start = 0
            for target, n in targets:
                for name in drawn[start : start + n]:
                    chosen[f"{source}/{cls}/{name}"] = f"{target}/{cls}/{name}"
                start += n
    return chosen


def complete(out: str, manifest: dict) -> bool:
    """Whether ``out`` is this subset already: the same manifest and every chosen file present."""
    try:
        with open(os.path.join(out, MANIFEST)) as handle:
            if json.load(handle) != manifest:
                return False
    except (OSError, ValueError):
        return False
    return all(os.path.isfile(os.path.join(out, path)) for path in manifest["files"].values())


def extract(archive: str, chosen: dict[str, str], into: str) -> None:
    """Copy the chosen members of ``archive`` to their subset paths under ``into``, in one pass over the archive."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            target = chosen.get(member.name)
            if target is None or not member.isfile():
                continue
            path = os.path.join(into, target)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(path, "wb") as handle:
                shutil.copyfileobj(source, handle)
            os.utime(path, (member.mtime, member.mtime))
    missing = [path for path in chosen.values() if not os.path.isfile(os.path.join(into, path))]
    if missing:
        raise SystemExit(f"{len(missing)} chosen files were not extracted, e.g. {missing[0]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", required=True, help="cifar10-jpeg.tgz")
    parser.add_argument("--out", required=True, help="the subset's folder (train/, val/, test/); made if missing")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--val-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    checksum = sha256(args.archive)
    if checksum != ARCHIVE_SHA256:
        print(
            f"error: {args.archive} has SHA-256 {checksum}, not {ARCHIVE_SHA256}: not the archive this subset "
            "is defined on",
            file=sys.stderr,
        )
        return 1
    counts = {"train": args.train_per_class, "val": args.val_per_class, "test": args.test_per_class}
    chosen = choose(list_images(args.archive), counts["train"], counts["val"], counts["test"])
    manifest = {
        "archive_sha256": checksum,
        "per_class": counts,
        "rule": "per class, random.Random(class name).sample over the sorted file names; "
        "train then val from the archive's train/, test from its test/",
        "files": dict(sorted(chosen.items())),
    }
    out = os.path.abspath(args.out)
    if complete(out, manifest):
        print(f"{out}: already this subset, nothing to do ({time.perf_counter() - started:.1f} s)")
        return 0
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        print(
            f"error: {out} exists and is not this subset (other files or another {MANIFEST}); remove it or "
            "choose another --out",
            file=sys.stderr,
        )
        return 1

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        extract(args.archive, chosen, partial)
        with open(os.path.join(partial, MANIFEST), "w") as handle:
            json.dump(manifest, handle, indent=1)
        os.chmod(partial, 0o755)
        if os.path.isdir(out):
            os.rmdir(out)  # empty, checked above
        os.rename(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    totals = {split: sum(1 for path in chosen.values() if path.startswith(f"{split}/")) for split in counts}
    print(
        f"{out}: "
        + ", ".join(f"{split}/ {n:,}" for split, n in totals.items())
        + f" images in {len(set(p.split('/')[1] for p in chosen.values()))} classes "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
