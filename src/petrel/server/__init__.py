"""Listeners and sessions: asyncio around the sans-IO core, no policy and no files."""

from .server import Server
from .session import SmtpSession

__all__ = ["Server", "SmtpSession"]
