"""The HTTP server (``/metrics``, ``/healthz``, ``/readyz``) and the exporter-toolkit web config it reads.

:mod:`~exporter.web.server` serves; :mod:`~exporter.web.toolkit` is the ``--web.config.file``
format; :mod:`~exporter.web.tls` builds TLS contexts; :mod:`~exporter.web.basic_auth` checks
passwords.
"""

from exporter.web.server import GZIP_LEVEL, NOT_READY_REASON, MetricsServer
from exporter.web.toolkit import ToolkitConfig, WebConfigError, load_toolkit_config

__all__ = [
    "GZIP_LEVEL",
    "NOT_READY_REASON",
    "MetricsServer",
    "ToolkitConfig",
    "WebConfigError",
    "load_toolkit_config",
]
