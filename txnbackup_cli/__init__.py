"""The txnbackup command line, the outermost shell over txnbackup, tasks and workers."""
