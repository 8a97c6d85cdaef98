"""The node operator's web console: status, datasets, plan review, experiments, logs, audit.

Server-rendered pages over the node home's own database and logs (no second source of
truth), served by uvicorn. Needs the optional ``console`` extra.
"""

from __future__ import annotations

from common.errors import ConfigurationError

try:
    import jinja2  # noqa: F401
    import python_multipart  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ConfigurationError(
        f"the node console needs web packages that are not installed ({exc.name}): "
        "run `pip install 'fedloom[console]'`"
    ) from exc

from node.console.app import create_app
from node.console.server import check_bind, serve_console

__all__ = ["check_bind", "create_app", "serve_console"]
