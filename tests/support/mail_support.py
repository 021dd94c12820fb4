"""What the mail tests share: a context for the welcome mail and a worker's mail settings."""

from __future__ import annotations

#: A context the ``welcome`` template renders with.
WELCOME = {"customer": {"name": "Zoë Ørsted"}, "login_url": "https://shop.example/login"}


def mail_env(smtp_port: int) -> dict[str, str]:
    """A mail worker's environment: the test SMTP server, a sender, a prefix, quick retries."""
    return {
        "PIPELINE_SMTP_PORT": str(smtp_port),
        "PIPELINE_MAIL_SENDER": "Shop <shop@example.com>",
        "PIPELINE_MAIL_SUBJECT_PREFIX": "[Shop] ",
        "PIPELINE_RETRY_MIN_BACKOFF": "200",
        "PIPELINE_RETRY_MAX_BACKOFF": "400",
    }
