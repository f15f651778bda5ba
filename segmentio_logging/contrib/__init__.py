"""Integrations with web frameworks, task queues and test runners.

Each module imports its framework only when it is imported itself:
``segmentio_logging.contrib.django``, ``.asgi``, ``.wsgi`` and the pytest
plugin (``.pytest_plugin``, loaded by pytest through its entry point).
"""
