"""The names of txnbackup's Celery tasks, as registered by tasks.copy and tasks.finish."""

COPY_DRIVE = "txnbackup.copy_drive"
COMMIT = "txnbackup.commit"
ROLLBACK = "txnbackup.rollback"
BEGIN = "txnbackup.begin"
