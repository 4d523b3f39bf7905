"""``python -m pinthesky`` runs the same entry point as the console script."""

from pinthesky.daemon.cli import main

raise SystemExit(main())
