"""``python -m exporter`` is the ``nico-task-exporter`` command."""

from exporter.cli import main

raise SystemExit(main())
