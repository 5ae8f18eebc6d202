"""Temporary folders named after the process that made them, so that a later run can remove
what a killed one (SIGKILL, power loss) left behind."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_NAME = re.compile(r"^\.?onnxq-(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(directory: str | os.PathLike | None = None) -> None:
    """Delete onnxq temporary folders in ``directory`` (default: the system's) whose process
    is gone."""
    folder = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _NAME.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


class TempDir:
    """A temporary folder ``onnxq-<pid>-<kind>-*`` (hidden ``.onnxq-...`` beside user files),
    removed on exit from the ``with`` block, on :meth:`cleanup`, or by a later run."""

    def __init__(self, kind: str, directory: str | os.PathLike | None = None):
        remove_stale(directory)
        prefix = f"{'.' if directory is not None else ''}onnxq-{os.getpid()}-{kind}-"
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Delete the folder and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)
