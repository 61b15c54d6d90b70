"""The web dashboard: castor's tasks, queues, daemons and schedules in a browser (`castor[web]`).

    from starlette.applications import Starlette
    from starlette.routing import Mount
    from castor.webui import dashboard

    app = Starlette(routes=[Mount("/castor", app=dashboard(manager))])

or standalone: `castord web main:manager`. Server-rendered HTML (Jinja2) with one
vendored script (htmx, for live updates; static/VENDORED.md); no CDN, no build step,
and no request leaves the server. docs/web-dashboard.md describes each screen.
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # tests/web/test_assets.py hides each
    raise ModuleNotFoundError(
        f"castor.webui needs Starlette and Jinja2 ({exc}); install them with: pip install 'castor[web]'",
        name=exc.name) from exc

from castor.webui.app import dashboard

__all__ = ["dashboard"]
