"""Field-agent client for HQ: ``AgentClient`` plus typed errors carrying the contract's codes.

    async with AgentClient("https://hq.example") as client:
        await client.login("fox", password)
        await client.connect(channels=["missions"])
        async for message in client:
            print(message.channel, message.id, message.sender, message.text)
"""

import logging

from .client import AgentClient, ClientStats
from .errors import (AgentClientError, AgentDisabled, BadRequest, CertificateError, ClientClosed,
                     ConnectionLost, ConnectionRefused, Forbidden, InvalidOtp, LoginFailed, MfaEnrollmentRequired,
                     MfaRequired, NotConnected, NotFound, NotLoggedIn, PayloadTooLarge, RateLimited, ServerError,
                     SessionEnded, TokenRejected, TokenReused, TooManyAttempts, Unavailable, UnsupportedMediaType)
from .messages import Agent, Message

# A library stays quiet unless the application configures logging.
logging.getLogger("agent_client").addHandler(logging.NullHandler())

__all__ = [
    "Agent", "AgentClient", "AgentClientError", "AgentDisabled", "BadRequest", "CertificateError",
    "ClientClosed", "ClientStats", "ConnectionLost", "ConnectionRefused", "Forbidden", "InvalidOtp", "LoginFailed",
    "Message", "MfaEnrollmentRequired", "MfaRequired", "NotConnected", "NotFound", "NotLoggedIn", "PayloadTooLarge", "RateLimited", "ServerError",
    "SessionEnded", "TokenRejected", "TokenReused", "TooManyAttempts", "Unavailable", "UnsupportedMediaType",
]
