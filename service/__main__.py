"""``python -m service`` runs the ``anomaly-detector`` command line."""

from service.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
