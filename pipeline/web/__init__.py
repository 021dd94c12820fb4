"""The web dashboard: jobs, queues, workers and dead letters in a browser (the ``web`` extra).

``make_app(prefix="/jobs", authorize=callable, writes=True)`` is a WSGI application; ``pipeline
web`` serves it standalone. Workers and senders never import this package.
"""

from pipeline.web.access import Role
from pipeline.web.app import make_app

__all__ = ["Role", "make_app"]
