"""The research program (AGENTS.md) that init writes and the server serves as a prompt/resource."""

from __future__ import annotations

from pathlib import Path

TEMPLATE = Path(__file__).parent / "templates" / "AGENTS.md"


def default_program() -> str:
    return TEMPLATE.read_text()


def read_program(root: Path) -> str:
    """The workspace's AGENTS.md (users may edit it), else the packaged default."""
    path = Path(root) / "AGENTS.md"
    return path.read_text() if path.is_file() else default_program()
