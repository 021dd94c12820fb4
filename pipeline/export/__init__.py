"""Order export: the order schema, where orders come from, the workbook and the exporter.

Domain code: it imports neither Dramatiq nor Redis.
"""
