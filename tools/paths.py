"""Where the generated files live: the repository the tools run from (never an installed package)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
