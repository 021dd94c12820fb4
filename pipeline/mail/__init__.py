"""Templated email: rendering, building, SMTP delivery and the at-most-once mailer.

Domain code: it imports neither Dramatiq nor Redis.
"""
