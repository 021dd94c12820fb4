"""What the export tests share: folders, a worker's export settings, a look into the files."""

from __future__ import annotations

from pathlib import Path

import openpyxl


def make_folders(root: Path) -> tuple[Path, Path]:
    """An export folder (not made yet: the exporter makes it) and an import folder under ``root``."""
    exports, imports = root / "exports", root / "imports"
    imports.mkdir()
    return exports, imports


def export_env(exports: Path, imports: Path) -> dict[str, str]:
    """An export worker's environment: its folders, the sample plug-in, quick retries."""
    return {
        "PIPELINE_EXPORT_DIR": str(exports),
        "PIPELINE_IMPORT_DIR": str(imports),
        "PIPELINE_ORDER_SOURCE": "sample_source:iter_orders",
        "PIPELINE_RETRY_MIN_BACKOFF": "200",
        "PIPELINE_RETRY_MAX_BACKOFF": "400",
    }


def finished_files(exports: Path) -> list[str]:
    """The names of the files in the export folder, sorted."""
    return sorted(p.name for p in exports.iterdir()) if exports.exists() else []


def order_ids(path: str | Path) -> list[str]:
    """The order ids of an export's Orders sheet, in order."""
    sheet = openpyxl.load_workbook(path, read_only=True)["Orders"]
    return [row[0] for row in sheet.iter_rows(min_row=2, values_only=True)]
