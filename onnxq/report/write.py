"""Writing a report: the HTML page, the JSON, and the culprits' ``overrides.toml`` beside
them, each written whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

from onnxq.errors import OnnxqError
from onnxq.io.model_io import check_output_folder
from onnxq.report.build import OVERRIDES_FILE, overrides_text
from onnxq.report.render import render_html


def _write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OnnxqError(f"cannot write {path} ({exc.strerror or type(exc).__name__})"
                         ) from None


def report_paths(html_out: str | os.PathLike | None, json_out: str | os.PathLike | None
                 ) -> dict[str, Path]:
    """Where the report's files go (``overrides.toml`` beside the HTML, else the JSON);
    a folder that cannot be written is refused before anything is measured."""
    paths = {key: Path(value) for key, value in (("html", html_out), ("json", json_out))
             if value is not None}
    if not paths:
        raise OnnxqError("the report needs somewhere to go: give -o report.html and/or "
                         "--json report.json")
    for key, path in paths.items():
        check_output_folder(path, "-o" if key == "html" else "--json")
    paths["overrides"] = next(iter(paths.values())).with_name(OVERRIDES_FILE)
    return paths


def write_report(report: dict, paths: dict[str, Path], pareto: dict | None = None
                 ) -> list[Path]:
    """Write the report's files to ``paths`` (``report_paths``); return them."""
    overrides = overrides_text(report["culprits"], report["quantized"])
    if "json" in paths:
        _write(paths["json"], json.dumps(report, indent=1))
    if "html" in paths:
        _write(paths["html"], render_html(report, overrides, pareto))
    _write(paths["overrides"], overrides)
    return list(paths.values())
