"""Settings: defaults, parsing, validation that names the variable and the value."""

from __future__ import annotations

import pytest

from pipeline.errors import SettingsError
from pipeline.settings import Settings, mask_url


def test_defaults_point_at_local_services():
    settings = Settings.from_env({})
    assert settings.broker_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.queue_priorities == {"default": 10, "slow": 5}
    assert settings.confirm_delivery is True
    assert settings.result_ttl == 86_400


def test_values_are_read_from_pipeline_variables():
    settings = Settings.from_env(
        {
            "PIPELINE_RESULT_TTL": "60",
            "PIPELINE_QUEUE_PRIORITIES": "default=9, slow=3, reports=2",
            "PIPELINE_CONFIRM_DELIVERY": "no",
            "PIPELINE_REDIS_URL": "redis://cache:6379/2",
        }
    )
    assert settings.result_ttl == 60
    assert settings.queue_priorities == {"default": 9, "slow": 3, "reports": 2}
    assert settings.max_priority("reports") == 2 and settings.max_priority("other") == 0
    assert settings.confirm_delivery is False
    assert settings.redis_url == "redis://cache:6379/2"


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("PIPELINE_RESULT_TTL", "a day", "expected a whole number"),
        ("PIPELINE_RESULT_TTL", "0", "must be at least 1"),
        ("PIPELINE_CONFIRM_DELIVERY", "maybe", "expected a boolean"),
        ("PIPELINE_QUEUE_PRIORITIES", "default:10", "is not of the form queue=number"),
        ("PIPELINE_QUEUE_PRIORITIES", "default=ten", "'ten' is not a whole number"),
        ("PIPELINE_QUEUE_PRIORITIES", "default=300", "between 0 and 255"),
        # The later was taken, silently: a typo'd copy of a line decided the queue's declaration.
        ("PIPELINE_QUEUE_PRIORITIES", "default=10,slow=5,default=3", "names queue 'default' twice"),
        ("PIPELINE_CLASSIC_QUEUE_VERSION", "1", "expected one of 2, server"),
        ("PIPELINE_BROKER_URL", "http://rabbit", "amqp://"),
        ("PIPELINE_REDIS_URL", "127.0.0.1:6379", "redis://"),
        ("PIPELINE_RETRY_MAX_BACKOFF", "10", "must be at least 15000"),
        ("PIPELINE_MAIL_SENDER", "a@example.com, b@example.com", "must be one address, not 2"),
        ("PIPELINE_MAIL_SENDER", "Shop", "is not an address"),
        ("PIPELINE_MAIL_SENDER", "Shop <shop@localhost>", "is not an address"),
        ("PIPELINE_MAIL_SENDER", "Shop\x0b <shop@example.com>", "control character"),
        ("PIPELINE_MAIL_SUBJECT_PREFIX", "[Shop]\n", "line break"),
        ("PIPELINE_MAIL_SUBJECT_PREFIX", "[Shop]\u2028", "line break"),
        ("PIPELINE_NAMESPACE", "shop:eu", "expected letters, digits"),
        ("PIPELINE_NAMESPACE", "", "expected letters, digits"),
        # The AMQP app_id of every message: past 255 bytes every send failed with pika's
        # ShortStringTooLong, its QUEUED record left behind.
        ("PIPELINE_SERVICE_NAME", "shop-" * 60, "printable text of 1 to 255 bytes"),
        ("PIPELINE_SERVICE_NAME", "", "printable text of 1 to 255 bytes"),
        ("PIPELINE_SERVICE_NAME", "shop\nBcc", "printable text of 1 to 255 bytes"),
        ("PIPELINE_REDIS_SOCKET_TIMEOUT", "0", "must be more than 0"),
        ("PIPELINE_REDIS_CONNECT_TIMEOUT", "-1", "must be more than 0"),
        ("PIPELINE_BROKER_BLOCKED_TIMEOUT", "0", "must be more than 0"),
        # Each passed, then failed every connection: a socket takes no NaN, infinite or
        # 300-year timeout; and the resolver wraps a port past 65535 (70000 is 4464).
        ("PIPELINE_SMTP_TIMEOUT", "nan", "expected a finite number"),
        ("PIPELINE_REDIS_SOCKET_TIMEOUT", "inf", "expected a finite number"),
        ("PIPELINE_REDIS_CONNECT_TIMEOUT", "1e10", "must be at most 1,000,000,000"),
        ("PIPELINE_SHUTDOWN_GRACE", "1e300", "must be at most 1,000,000,000"),
        ("PIPELINE_SMTP_PORT", "70000", "must be at most 65,535"),
        # A key's lifetime past what Redis's SET EX takes failed every record write.
        ("PIPELINE_RESULT_TTL", "10000000000000000", "must be at most 1,000,000,000"),
        # A backoff that makes a retry due past the year 9999 is refused when the retry is sent.
        ("PIPELINE_RETRY_MAX_BACKOFF", "1" + "0" * 20, "must be at most 1,000,000,000,000"),
        # A pool of that many places was made at a worker's start.
        ("PIPELINE_SMTP_MAX_CONNECTIONS", "1000000000000", "must be at most 10,000"),
        ("PIPELINE_RABBITMQ_CONSUMER_TIMEOUT", "0", "must be at least 1"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_value(variable, value, complaint):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: value})
    assert variable in str(raised.value)
    assert complaint in str(raised.value)


def test_a_bad_url_is_reported_without_its_password():
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"PIPELINE_BROKER_URL": "http://admin:topsecret@rabbit/"})
    assert "topsecret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "amqp://guest:***@127.0.0.1:5672/%2F"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("amqp://a:x@h1/%2F;amqp://a:y@h2/%2F", "amqp://a:***@h1/%2F;amqp://a:***@h2/%2F"),
    ],
)
def test_mask_url_hides_passwords(url, masked):
    assert mask_url(url) == masked


def test_an_export_time_limit_above_the_consumer_timeout_says_what_to_raise():
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"PIPELINE_EXPORT_TIME_LIMIT": "1800"})
    message = str(raised.value)
    assert "PIPELINE_EXPORT_TIME_LIMIT" in message and "consumer_timeout" in message
    assert "PIPELINE_RABBITMQ_CONSUMER_TIMEOUT" in message
    settings = Settings.from_env(
        {"PIPELINE_EXPORT_TIME_LIMIT": "3600", "PIPELINE_RABBITMQ_CONSUMER_TIMEOUT": "7200000"}
    )
    assert settings.export_time_limit == 3600


def test_the_default_export_time_limit_is_well_above_dramatiqs_ten_minutes():
    assert 600 < Settings().export_time_limit < Settings().rabbitmq_consumer_timeout / 1000


def test_a_retry_backoff_past_the_consumer_timeout_is_taken_since_retries_wait_in_redis():
    settings = Settings.from_env({"PIPELINE_RETRY_MAX_BACKOFF": str(6 * 3_600_000)})
    assert settings.retry_max_backoff > settings.rabbitmq_consumer_timeout


def test_a_valid_sender_and_namespace_are_kept():
    settings = Settings.from_env(
        {"PIPELINE_MAIL_SENDER": "Zoë's Shop <noreply@shop.example>", "PIPELINE_NAMESPACE": "eu-1"}
    )
    assert settings.mail_sender == "Zoë's Shop <noreply@shop.example>" and settings.namespace == "eu-1"


def test_a_publisher_blocked_by_rabbitmq_waits_the_setting_unless_the_url_says_otherwise():
    from pipeline.broker import build_broker

    default = build_broker(Settings(broker_blocked_timeout=4.5))
    assert default.parameters.blocked_connection_timeout == 4.5
    url = "amqp://guest:guest@127.0.0.1:5672/%2F?blocked_connection_timeout=30"
    assert build_broker(Settings(broker_url=url)).parameters.blocked_connection_timeout == 30
