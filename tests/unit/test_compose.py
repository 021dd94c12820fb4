"""docker-compose.yml, read as Docker would: the services, ports and commands users rely on."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from pipeline.queues import QUEUES
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def read_env_file() -> dict[str, str]:
    """``.env`` as Docker Compose (and a shell's ``set -a; . ./.env``) reads it: ``${NAME}`` is
    replaced by what the file set before."""
    values: dict[str, str] = {}
    for line in (ROOT / ".env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = interpolate(value.strip(), values)
    return values


def interpolate(text: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        assert match[1] in values, f"${{{match[1]}}} is not set in .env"
        return values[match[1]]

    return re.sub(r"\$\{(\w+)\}", value, text)


@pytest.fixture(scope="module")
def env_file() -> dict[str, str]:
    return read_env_file()


@pytest.fixture(scope="module")
def compose(env_file) -> dict:
    return yaml.safe_load(interpolate((ROOT / "docker-compose.yml").read_text(), env_file))


def ports(service: dict) -> set[str]:
    return {str(p) for p in service.get("ports", [])}


def test_rabbitmq_has_amqp_and_the_management_ui(compose):
    rabbit = compose["services"]["rabbitmq"]
    assert "management" in rabbit["image"]
    assert {"5672:5672", "15672:15672"} <= ports(rabbit)


def test_rabbitmq_config_it_mounts_exists_and_raises_the_consumer_timeout(compose):
    mounts = [v.split(":") for v in compose["services"]["rabbitmq"]["volumes"] if v.startswith("./")]
    (source, target, _) = mounts[0]
    assert target.startswith("/etc/rabbitmq/conf.d/")
    text = (ROOT / source).read_text()
    timeout = int(next(line.split("=")[1] for line in text.splitlines() if line.startswith("consumer_timeout")))
    assert timeout > 30 * 60 * 1000


def test_redis_and_the_smtp_catcher_are_there(compose):
    assert "6379:6379" in ports(compose["services"]["redis"])
    mailpit = compose["services"]["mailpit"]
    assert "mailpit" in mailpit["image"] and {"1025:1025", "8025:8025"} <= ports(mailpit)


@pytest.mark.parametrize("queue", QUEUES)
def test_one_worker_per_queue_runs_the_actors_module(compose, queue):
    command = compose["services"][f"worker-{queue}"]["command"]
    # Mail waits on the relay: its worker runs greenlets; exports run on threads.
    runner = "dramatiq-gevent" if queue == "default" else "dramatiq"
    assert command[:2] == [runner, "pipeline.actors"]
    # --queues takes the rest of the words, so it must come last.
    assert command[-2:] == ["--queues", queue]


def test_the_mail_worker_keeps_an_smtp_connection_for_each_greenlet(compose):
    worker = compose["services"]["worker-default"]
    threads = int(worker["command"][worker["command"].index("--threads") + 1])
    assert int(worker["environment"]["PIPELINE_SMTP_MAX_CONNECTIONS"]) >= threads
    assert "gevent" in (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize("queue", QUEUES)
def test_workers_reach_the_services_by_their_service_names(compose, queue):
    worker = compose["services"][f"worker-{queue}"]
    env = worker["environment"]
    broker = urlsplit(env["PIPELINE_BROKER_URL"])
    rabbit_env = compose["services"]["rabbitmq"]["environment"]
    assert broker.hostname == "rabbitmq" and broker.username == rabbit_env["RABBITMQ_DEFAULT_USER"]
    assert broker.password == rabbit_env["RABBITMQ_DEFAULT_PASS"]
    assert urlsplit(env["PIPELINE_REDIS_URL"]).hostname == "redis"
    assert env["PIPELINE_SMTP_HOST"] == "mailpit" and env["PIPELINE_SMTP_PORT"] == "1025"
    assert set(worker["depends_on"]) == {"rabbitmq", "redis", "mailpit"}
    assert (ROOT / worker["build"] / "Dockerfile").is_file()


def test_the_image_installs_the_package(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install" in dockerfile and "COPY pipeline" in dockerfile


@pytest.mark.parametrize("queue", QUEUES)
def test_worker_settings_are_valid_and_match_the_rabbitmq_config(compose, queue):
    env = {k: str(v) for k, v in compose["services"][f"worker-{queue}"]["environment"].items()}
    settings = Settings.from_env(env)
    config = (ROOT / "deploy" / "rabbitmq.conf").read_text()
    timeout = int(next(line.split("=")[1] for line in config.splitlines() if line.startswith("consumer_timeout")))
    assert settings.rabbitmq_consumer_timeout == timeout
    assert settings.export_time_limit * 1000 < timeout


@pytest.mark.parametrize("queue", QUEUES)
def test_workers_have_a_health_check_that_asks_both_services(compose, queue):
    assert compose["services"][f"worker-{queue}"]["healthcheck"]["test"] == ["CMD", "pipeline", "check"]


def test_exports_are_served_over_http_where_the_workers_link_them(compose):
    server = compose["services"]["exports"]
    assert "exports:/exports:ro" in server["volumes"] and "http.server" in server["command"]
    (published,) = ports(server)
    host_port = published.split(":")[0]
    for queue in QUEUES:
        worker = compose["services"][f"worker-{queue}"]
        assert worker["environment"]["PIPELINE_EXPORT_BASE_URL"] == f"http://localhost:{host_port}"
        assert "exports:/exports" in worker["volumes"]


def test_the_image_runs_as_the_unprivileged_user_the_file_server_runs_as(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"useradd .*--uid (\d+) (\w+)", dockerfile)
    assert user is not None and f"USER {user[2]}" in dockerfile and user[2] != "root"
    assert "chown pipeline /exports" in dockerfile
    assert str(compose["services"]["exports"]["user"]) == user[1]


def test_the_env_file_is_the_one_place_of_credentials_and_the_hosts_urls(compose, env_file):
    rabbit = compose["services"]["rabbitmq"]["environment"]
    assert rabbit["RABBITMQ_DEFAULT_USER"] == env_file["RABBITMQ_USER"]
    for name in ("PIPELINE_BROKER_URL", "PIPELINE_TEST_BROKER_URL"):
        url = urlsplit(env_file[name])
        assert (url.username, url.password) == (env_file["RABBITMQ_USER"], env_file["RABBITMQ_PASSWORD"])
        assert url.hostname == "127.0.0.1" and url.port == 5672
    settings = Settings.from_env({k: v for k, v in env_file.items() if k.startswith("PIPELINE_")})
    assert urlsplit(settings.management_url or "").port == 15672


@pytest.mark.parametrize("queue", QUEUES)
def test_workers_get_their_shutdown_grace_before_docker_kills_them(compose, queue):
    worker = compose["services"][f"worker-{queue}"]
    grace = Settings.from_env({k: str(v) for k, v in worker["environment"].items()}).shutdown_grace
    assert worker["stop_grace_period"].endswith("s") and int(worker["stop_grace_period"][:-1]) > grace


def test_redis_keeps_delayed_jobs_across_a_restart(compose):
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
