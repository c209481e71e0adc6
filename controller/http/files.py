"""Files handed out as downloads (a ticket's diagnostics bundle), for the API and the dashboard."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web


def download(path: Path, *, filename: str, content_type: str) -> web.FileResponse:
    """``path`` streamed as an attachment named ``filename`` (a name made safe when stored)."""
    return web.FileResponse(
        path,
        headers={
            "Content-Type": content_type,
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )
