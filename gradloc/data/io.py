"""Finding images, decoding them in worker processes, and streaming results to disk.

Results go to ``predictions.jsonl`` one line per image as soon as its batch is done, so a
killed run loses at most the batch in flight; ``--resume`` reads that file and skips what
is finished. ``predictions.json`` is assembled from it at the end, written to a temporary
file and renamed, so it is either complete or absent.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from torch.utils.data import DataLoader, Dataset

from .preprocess import DEFAULT_MAX_PIXELS, ImageError, prepare

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff",
                              ".webp", ".ppm", ".pgm", ".pbm", ".jfif"})


def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[dict]]:
    """Files named directly, and image files found recursively in folders.

    Folders are walked following links, each real folder once (a symlink loop ends).
    A file given by name is taken whatever its extension; inside folders only files
    with an image extension are taken.

    Returns
    -------
    files : list of Path, in sorted order per argument, without duplicates
    skipped : list of {"file", "reason"} for paths that cannot be walked
    """
    files: list[Path] = []
    skipped: list[dict] = []
    seen_files: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.abspath(p)
        if key not in seen_files:
            seen_files.add(key)
            files.append(p)

    for raw in paths:
        root = Path(raw)
        if root.is_dir():
            seen_dirs: set[str] = set()
            errors: list[OSError] = []
            found: list[Path] = []
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=errors.append):
                real = os.path.realpath(dirpath)
                if real in seen_dirs:
                    dirnames[:] = []  # a link back to a folder already walked
                    continue
                seen_dirs.add(real)
                dirnames.sort()
                found += [Path(dirpath) / f for f in filenames
                          if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
            for e in errors:
                skipped.append({"file": str(e.filename), "reason": f"cannot read folder: {e.strerror}"})
            for p in sorted(found):
                add(p)
        elif root.exists() or root.is_symlink():
            add(root)
        else:
            skipped.append({"file": str(root), "reason": "file not found"})
    return files, skipped


class ImageFiles(Dataset):
    """Decodes and resizes files; a bad file yields its reason instead of raising."""

    def __init__(self, files: list[Path], max_pixels: int = DEFAULT_MAX_PIXELS, keep_work: bool = False,
                 input_size: int = 32) -> None:
        self.files, self.max_pixels, self.keep_work = files, max_pixels, keep_work
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            x, size, work = prepare(self.files[i], self.max_pixels, self.keep_work, self.input_size)
            return i, x, size, None, work
        except ImageError as exc:
            return i, None, None, str(exc), None
        except Exception as exc:  # a decoder bug must not end a long run
            return i, None, None, f"cannot decode: {type(exc).__name__}: {exc}", None


def _keep_list(batch):
    return batch


def decoding_workers(workers: int | None = None) -> int:
    """Data-loader processes for decoding: ``workers`` as given, or by default 1 beside the
    compute, and 0 on machines of 2 cores or fewer, where a decoding process can only take a core
    from the network's threads (2 cores: 53.5 against 63.2 images/s on dev thumbnails)."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0: decode in this process), got {workers!r}")
        return workers
    return 1 if (os.cpu_count() or 1) > 2 else 0


def iter_batches(files: list[Path], batch_size: int, workers: int | None = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS, keep_work: bool = False,
                 input_size: int = 32) -> Iterator[list[tuple]]:
    """Yield lists of ``(index, uint8 [3, S, S] | None (S = input_size), (h, w) | None, reason | None,
    working-resolution image | None)``; the last is kept with ``keep_work``.

    With ``workers > 0`` decoding runs in worker processes, overlapping with compute (None:
    :func:`decoding_workers`).
    """
    workers = decoding_workers(workers)
    loader = DataLoader(ImageFiles(files, max_pixels, keep_work, input_size), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_keep_list,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    yield from loader


def dumps_record(rec) -> str:
    """One record as a JSON line. File names that are not valid UTF-8 (legal on Linux) reach
    Python as surrogate escapes (PEP 383); such a record is written with ASCII escapes
    (``\\udcXX``), valid JSON that reads back to the same name, instead of failing the run."""
    text = json.dumps(rec, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(rec, ensure_ascii=True)
    return text


def read_complete_lines(path: Path) -> list[str]:
    """The lines of a JSON-lines file up to the first that a crash cut (not valid UTF-8, e.g.
    cut inside a multi-byte character, or not a JSON object): what came after is redone."""
    good = []
    for raw in Path(path).read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
            if not isinstance(json.loads(line), dict):
                break
        except (UnicodeDecodeError, json.JSONDecodeError):
            break
        good.append(line)
    return good


class OutputLock:
    """One writer per output folder: ``FOLDER/.gradloc.lock`` holds the owner's pid while a run
    writes there and is removed when it ends. A second run is refused in one line; a lock left by
    a run that was killed (its pid is gone) is taken over."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ".gradloc.lock"

    def __enter__(self) -> "OutputLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise ValueError(f"{self.folder} is being written by another gradloc run (pid {owner}); "
                                     "wait for it to finish or choose another output folder") from None
                self.path.unlink(missing_ok=True)  # stale: its run was killed
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            return self
        raise ValueError(f"cannot take the lock {self.path}: another run keeps replacing it")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class ResultStream:
    """Append-only JSON-lines log of finished images and skips, with resume.

    Each line is ``{"file": ..., ...}`` for an image or ``{"file": ..., "skipped": reason}``.
    """

    def __init__(self, path: Path, resume: bool = False) -> None:
        self.path = Path(path)
        self.done: set[str] = set()
        self._resolved: set[str] | None = None
        if resume and self.path.is_file():
            good = []
            for line in read_complete_lines(self.path):
                rec = json.loads(line)
                if not isinstance(rec.get("file"), str):
                    break  # not one of ours: it and anything after are redone
                self.done.add(rec["file"])
                good.append(line + "\n")
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(good), encoding="utf-8")
            os.replace(tmp, self.path)
            self._f = open(self.path, "a", encoding="utf-8")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "w", encoding="utf-8")

    def has(self, file: str) -> bool:
        """Whether ``file`` is finished, however its path is spelled (relative or absolute,
        through a link): the earlier run may have named the folder another way."""
        if file in self.done:
            return True
        if self._resolved is None:
            self._resolved = {os.path.realpath(f) for f in self.done}
        return os.path.realpath(file) in self._resolved

    def write(self, records: list[dict]) -> None:
        for rec in records:
            self._f.write(dumps_record(rec) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def write_predictions_json(jsonl: Path, out: Path, header: dict) -> tuple[int, int]:
    """Stream ``jsonl`` into the documented ``predictions.json`` layout, atomically.

    Memory stays flat: records are copied one at a time. Returns (images, skipped).
    """
    tmp = out.with_name(out.name + ".tmp")
    n_img = n_skip = 0
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("{\n")
        for k, v in header.items():
            f.write(f"{json.dumps(k)}: {dumps_record(v)},\n")
        f.write('"images": [')
        for rec in read_jsonl(jsonl):
            if "skipped" not in rec:
                f.write(("," if n_img else "") + "\n  " + dumps_record(rec))
                n_img += 1
        f.write('\n],\n"skipped": [')
        for rec in read_jsonl(jsonl):
            if "skipped" in rec:
                entry = {"file": rec["file"], "reason": rec["skipped"]}
                f.write(("," if n_skip else "") + "\n  " + dumps_record(entry))
                n_skip += 1
        f.write("\n]\n}\n")
    os.replace(tmp, out)
    return n_img, n_skip


def atomic_write_text(path: Path, text: str) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
