"""amqps:// with the CA bundle of the settings, against a RabbitMQ node of the test's own that
speaks TLS with a certificate from a CA of the test's own."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from ports import free_port
from private_rabbitmq import PrivateRabbitMQ
from private_services import require
from testenv import make_settings

from pipeline.broker import build_broker
from pipeline.errors import BrokerUnavailable
from pipeline.queues import DEFAULT_QUEUE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_node() -> Iterator[tuple[int, Path]]:
    """A node with a TLS listener; its TLS port and the CA bundle that signs its certificate."""
    require("rabbitmq-server")
    folder = Path(tempfile.mkdtemp(prefix="pipeline-rabbitmq-tls-"))
    shutil.chown(folder, "rabbitmq", "rabbitmq")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    for path in files.values():
        shutil.chown(path, "rabbitmq", "rabbitmq")
    port = free_port()
    config = (
        f"listeners.ssl.default = {port}\n"
        f"ssl_options.cacertfile = {files['ca']}\nssl_options.certfile = {files['cert']}\n"
        f"ssl_options.keyfile = {files['key']}\nssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
    )
    node = PrivateRabbitMQ(folder / "node", config)
    try:
        node.start()
        yield port, files["ca"]
    finally:
        node.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_message_goes_over_tls_checked_against_the_ca_bundle(tls_node):
    port, ca_file = tls_node
    broker = build_broker(make_settings(broker_url=f"amqps://guest:guest@localhost:{port}/%2F", broker_ca_file=ca_file))
    broker.declare_queue(DEFAULT_QUEUE, ensure=True)
    from pipeline.actors import ping

    broker.enqueue(ping.message(1))
    assert broker.get_queue_message_counts(DEFAULT_QUEUE)[0] == 1
    broker.close()


def test_a_certificate_no_known_ca_signs_is_refused_naming_the_url_without_password(tls_node):
    port, _ = tls_node
    broker = build_broker(make_settings(broker_url=f"amqps://guest:guest@localhost:{port}/%2F"))
    from pipeline.actors import ping

    with pytest.raises(BrokerUnavailable) as refused:
        broker.enqueue(ping.message(1))
    assert f"amqps://guest:***@localhost:{port}" in str(refused.value)
