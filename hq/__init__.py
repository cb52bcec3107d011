"""HQ: a secure real-time Socket.IO server with JWT login, clearance channels and durable history."""

__version__ = "0.1.0"
