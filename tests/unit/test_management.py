"""Reading RabbitMQ's management API: where it is, and what a queue's answer says of its timeout."""

from __future__ import annotations

import pytest

from pipeline.management import broker_vhost, management_url, queue_consumer_timeout
from pipeline.settings import Settings


@pytest.mark.parametrize(
    ("queue", "timeout"),
    [
        ({"arguments": {"x-max-priority": 10}}, None),
        ({"arguments": {"x-consumer-timeout": 60000}}, 60000),
        ({"arguments": {}, "effective_policy_definition": {"consumer-timeout": 5000}}, 5000),
        ({"arguments": {"x-consumer-timeout": 9000}, "effective_policy_definition": {"consumer-timeout": 7000}}, 7000),
        ({"arguments": {"x-consumer-timeout": True}, "effective_policy_definition": []}, None),
        ({}, None),
    ],
    ids=["none", "argument", "policy", "both: the lower", "not a number", "empty answer"],
)
def test_a_queue_timeout_comes_from_its_argument_or_policy(queue, timeout):
    assert queue_consumer_timeout(queue) == timeout


def test_the_management_url_is_the_broker_host_with_its_credentials_by_default():
    settings = Settings(broker_url="amqp://shop:s3cret@mq.internal:5672/orders;amqp://shop:s3cret@mq2:5672/orders")
    assert management_url(settings) == "http://shop:s3cret@mq.internal:15672"
    assert broker_vhost(settings) == "orders"
    assert management_url(Settings(broker_url="amqps://a:b@mq:5671/%2F")) == "https://a:b@mq:15672"
    assert broker_vhost(Settings(broker_url="amqp://mq:5672")) == "/"


def test_a_management_url_setting_wins_and_is_masked_in_the_settings_repr():
    settings = Settings.from_env({"PIPELINE_MANAGEMENT_URL": "https://ops:hidden@mq-admin:443"})
    assert management_url(settings) == "https://ops:hidden@mq-admin:443"
    assert "hidden" not in repr(settings) and "export_base_url=None" in repr(settings)
