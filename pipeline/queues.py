"""The names of pipeline's queues."""

#: Fast, short jobs: mail, probes.
DEFAULT_QUEUE = "default"
#: Long jobs that must never delay the default queue: exports.
SLOW_QUEUE = "slow"
#: Every queue pipeline declares.
QUEUES = (DEFAULT_QUEUE, SLOW_QUEUE)
