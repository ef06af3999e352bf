"""rawchat: a WebSocket chat server built from scratch on asyncio, h11 and wsproto."""

__version__ = "0.1.0"
