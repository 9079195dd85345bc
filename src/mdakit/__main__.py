"""``python -m mdakit`` runs the command line."""

from mdakit.cli import main

main()
