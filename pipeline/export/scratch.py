"""Where an export's sheets are streamed: a scratch folder of the job's own, under the export area.

openpyxl's write-only mode streams each sheet into a temporary file in the system's temporary
folder and leaves it there when a job fails, is revoked, runs out of time or is killed. Here a
job's temporary files go into ``<export dir>/.scratch/<job id>``, which is removed however the
job ends; a worker starting up removes what dead jobs left (folders older than the longest an
export may run).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import threading
import time
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


# openpyxl offers no setting for where sheets are streamed; its writer looks this function up in
# its module on every sheet, so the one place to choose the folder is here.
_writer.create_temporary_file = _create_temporary_file


def scratch_root(export_dir: Path) -> Path:
    """The folder holding every job's scratch folder."""
    return export_dir / SCRATCH


@contextlib.contextmanager
def scratch_folder(export_dir: Path, job_id: str) -> Iterator[Path]:
    """A scratch folder for ``job_id``'s sheets in this thread, removed with all it holds at the end."""
    folder = scratch_root(export_dir) / re.sub(r"[^A-Za-z0-9_-]", "-", job_id)
    folder.mkdir(parents=True, exist_ok=True)
    _current.folder = str(folder)
    try:
        yield folder
    finally:
        _current.folder = None
        shutil.rmtree(folder, ignore_errors=True)
        # The common folder goes too once no job uses it (another job's keeps it).
        with contextlib.suppress(OSError):
            folder.parent.rmdir()
        _writer.ALL_TEMP_FILES[:] = [p for p in _writer.ALL_TEMP_FILES if not p.startswith(str(folder))]


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
