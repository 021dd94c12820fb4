# The image of pipeline's workers (see docker-compose.yml). It runs as an unprivileged user,
# which owns the export folder the compose file mounts a volume on.
FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY templates ./templates
RUN pip install --no-cache-dir '.[metrics,gevent]' \
    && useradd --create-home --uid 10001 pipeline \
    && mkdir /exports \
    && chown pipeline /exports
USER pipeline
CMD ["dramatiq-gevent", "pipeline.actors", "--threads", "200", "--queues", "default"]
