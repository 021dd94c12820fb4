"""Where an export's sheets are streamed: a scratch folder of each run's own, under the export area.

openpyxl's write-only mode streams each sheet into a temporary file in the system's temporary
folder and leaves it there when a job fails, is revoked, runs out of time or is killed. Here a
run's temporary files go into ``<export dir>/.scratch/<job id>-<run>``, removed however the run
ends. Each run has a folder of its own, and holds a lock on it while it lives: a job delivered
again while its first run still goes on (a worker cut off from RabbitMQ, not dead) runs twice
at once, on one host or, with a shared export folder, on two. A new run of a job removes what
its dead runs left (their lock is free: the kernel let go of it with the process); a worker
starting up removes any folder older than the longest an export may run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from openpyxl.worksheet import _writer

#: Name of the folder, under the export folder, that holds the jobs' scratch folders.
SCRATCH = ".scratch"

_current = threading.local()
_openpyxl_default = _writer.create_temporary_file


def _create_temporary_file(suffix: str = "") -> str:
    """Openpyxl's ``create_temporary_file``, in the scratch folder of the thread's job if it has one."""
    folder = getattr(_current, "folder", None)
    if folder is None:
        return _openpyxl_default(suffix)
    with tempfile.NamedTemporaryFile(mode="w+", suffix=suffix, prefix="openpyxl.", delete=False, dir=folder) as handle:
        name = handle.name
    _writer.ALL_TEMP_FILES.append(name)
    return name


_installed = threading.Lock()


def _install() -> None:
    """Put :func:`_create_temporary_file` in openpyxl's writer, once, when the first run starts
    (never at import: a service that only imports pipeline keeps openpyxl as it is).

    openpyxl offers no setting for where sheets are streamed; its writer looks this function up
    in its module on every sheet, so the one place to choose the folder is there.
    """
    if _installed.acquire(blocking=False):
        _writer.create_temporary_file = _create_temporary_file


def scratch_root(export_dir: Path) -> Path:
    """The folder holding every job's scratch folder."""
    return export_dir / SCRATCH


#: The file in a run's folder whose lock says the run is alive.
LOCK = ".lock"


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of an export job: its scratch folder and the token naming its files."""

    folder: Path
    token: str


def _prefix(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", job_id) + "-"


@contextlib.contextmanager
def scratch_folder(export_dir: Path, job_id: str) -> Iterator[Run]:
    """A scratch folder for this run of ``job_id``'s sheets in this thread, locked while the run
    lives and removed with all it holds at the end.
    """
    _install()
    token = uuid.uuid4().hex[:12]
    folder = scratch_root(export_dir) / (_prefix(job_id) + token)
    folder.mkdir(parents=True, exist_ok=True)
    # The lock file appears already locked (locked under another name, then renamed): a new
    # run of the job looking for dead runs never finds it free while this run starts.
    lock = os.open(folder / f"{LOCK}.{token}", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.rename(folder / f"{LOCK}.{token}", folder / LOCK)
    _current.folder = str(folder)
    try:
        yield Run(folder, token)
    finally:
        _current.folder = None
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)
        # The common folder goes too once no job uses it (another job's keeps it).
        with contextlib.suppress(OSError):
            folder.parent.rmdir()
        _writer.ALL_TEMP_FILES[:] = [p for p in _writer.ALL_TEMP_FILES if not p.startswith(str(folder))]


def dead_runs(export_dir: Path, job_id: str) -> list[str]:
    """Remove the scratch folders of ``job_id``'s runs that died; their tokens (a caller removes
    the runs' other leftovers). A run whose folder has no lock file yet is taken to be starting.
    """
    root = scratch_root(export_dir)
    tokens = []
    for folder in root.glob(_prefix(job_id) + "*") if root.is_dir() else []:
        try:
            lock = os.open(folder / LOCK, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # alive: its run holds the lock
        finally:
            os.close(lock)
        shutil.rmtree(folder, ignore_errors=True)
        tokens.append(folder.name.removeprefix(_prefix(job_id)))
    return tokens


def sweep(export_dir: Path, older_than: float) -> int:
    """Remove the scratch folders of jobs that died, untouched for ``older_than`` seconds.

    Returns:
      How many were removed.
    """
    root = scratch_root(export_dir)
    if not root.is_dir():
        return 0
    removed = 0
    limit = time.time() - older_than
    for folder in root.iterdir():
        with contextlib.suppress(OSError):
            if folder.stat().st_mtime < limit:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed
