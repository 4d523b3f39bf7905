"""``python -m pinthesky`` runs the same entry point as the console script."""

from pinthesky.cli import main

raise SystemExit(main())
