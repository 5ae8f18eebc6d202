"""``python -m onnxq`` runs the CLI."""

from onnxq.cli.commands import main

main()
