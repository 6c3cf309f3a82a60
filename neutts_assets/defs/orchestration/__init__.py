"""How runs reach the machines: the new-audio sensor, run-tag routing and the Celery worker hook."""
