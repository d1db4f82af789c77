"""txnbackup: transactional, incremental, deduplicated backups of VM drives.

This package is the domain: drives, dirty bitmaps, the repository, the copy engine. It never
imports Celery; ``tasks`` adapts it to the queue and ``workers`` runs the fleet.
"""

__version__ = "0.1.0"
