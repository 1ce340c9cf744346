"""The web console, the JSON API (``/api/v1/…``), live events and ``/metrics``."""

from .app import WebServer
from .events import Events

__all__ = ["Events", "WebServer"]
