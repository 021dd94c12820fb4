# The image of pipeline's workers (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY templates ./templates
RUN pip install --no-cache-dir .
CMD ["dramatiq", "pipeline.actors", "--queues", "default"]
