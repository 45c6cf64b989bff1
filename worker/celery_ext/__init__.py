"""Where the worker departs from stock Celery and kombu (see worker/celery_ext/bulk_publish.py)."""
