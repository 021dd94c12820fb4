"""The AMQP properties pipeline publishes a message with, and the name its connections carry.

RabbitMQ's management UI shows a message's properties under "Get messages" and a connection's
client-provided name on the Connections page: with these, a person reading either sees what a
message is and who is connected, without decoding bodies or matching ports to hosts.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import dramatiq
import pika

from pipeline.jobs.options import BROKER_PRIORITY_OPTION, RETRIES_OPTION

#: Delivery mode of a persistent message: written to disk by RabbitMQ.
PERSISTENT = 2
#: The content type of every body: Dramatiq's JSON encoding.
CONTENT_TYPE = "application/json"
#: The encoding of every body.
CONTENT_ENCODING = "utf-8"


def message_properties(message: dramatiq.Message[Any], app_id: str) -> pika.BasicProperties:
    """The properties of ``message``: persistent, its AMQP priority, and what a person filters on.

    Parameters:
      message: The message to publish.
      app_id: The name of the sending service.

    Returns:
      Properties with ``message_id``, ``type`` (the actor), ``app_id``, ``timestamp`` (seconds),
      the content type and encoding, and the headers ``actor``, ``attempt`` and ``priority``.
    """
    priority = message.options.get(BROKER_PRIORITY_OPTION)
    headers: dict[str, Any] = {
        "actor": message.actor_name,
        "attempt": int(message.options.get(RETRIES_OPTION, 0)) + 1,
        "priority": priority or 0,
    }
    return pika.BasicProperties(
        delivery_mode=PERSISTENT,
        priority=priority,
        message_id=message.message_id,
        type=message.actor_name,
        app_id=app_id,
        timestamp=message.message_timestamp // 1000,
        content_type=CONTENT_TYPE,
        content_encoding=CONTENT_ENCODING,
        headers=headers,
    )


def connection_name(service: str) -> str:
    """The client-provided name of this process's connections: service, host and process id."""
    return f"{service} on {socket.gethostname()} (pid {os.getpid()})"
