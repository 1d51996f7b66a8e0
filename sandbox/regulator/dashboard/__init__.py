"""The regulator dashboard at ``/sandbox/dashboard`` (docs/dashboard.md).

One public page and its static files; everything it shows comes from the regulator API (``/sandbox/v1``),
which the page's script calls with the token the regulator pastes into its login form. The page itself
holds no data and needs no authentication, so nothing here touches the store.
"""

from __future__ import annotations

from sandbox.regulator.dashboard.routes import (
    DASHBOARD_PREFIX,
    DEFAULT_REFRESH_SECONDS,
    dashboard_app,
    static_file,
)

__all__ = ["DASHBOARD_PREFIX", "DEFAULT_REFRESH_SECONDS", "dashboard_app", "static_file"]
