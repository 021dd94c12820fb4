"""pipeline: background jobs for web services on Dramatiq, RabbitMQ and Redis.

Send with ``from pipeline.actors import ...``; look a job up with
``from pipeline.results import AsyncResult``.
"""

__version__ = "0.1.0"
