"""The Python API: every CLI command is one call here, usable from a notebook.

Sections, one per subsystem, mirror `cli.py`.
"""

from __future__ import annotations

# ───────────────────────────── merge engine ─────────────────────────────


# ───────────────────────────── evaluation ─────────────────────────────


# ───────────────────────────── sweep ─────────────────────────────


# ───────────────────────────── built-in default ─────────────────────────────
