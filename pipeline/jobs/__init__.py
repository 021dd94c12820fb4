"""The worker machinery: the only code that knows Dramatiq's hooks.

The actor class and its send options, the middleware that checks messages at send, keeps each
job's record, decides retries and writes delayed starts, and what a running actor asks
(:mod:`~pipeline.jobs.current`, which alone of them loads no Dramatiq).
"""
