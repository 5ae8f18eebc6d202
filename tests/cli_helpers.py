"""Helpers shared by the command-line tests."""

from __future__ import annotations

from click.testing import CliRunner

from onnxq.cli.commands import main


def invoke(*args):
    """Run ``onnxq ARGS`` in-process; the result holds exit code and output."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    """A non-zero exit with one ``error:`` line (no traceback) holding every needle."""
    assert result.exit_code != 0
    text = result.output.split("\r")[-1].strip()  # after the (erased) progress bar
    assert text.startswith("error:") and "\n" not in text and "Traceback" not in text, text
    assert "internal error" not in text, text
    for needle in needles:
        assert needle in text, text
