"""The Celery layer of txnbackup: `celery -A tasks worker` finds the app here."""

from tasks.celeryapp import app

__all__ = ["app"]
