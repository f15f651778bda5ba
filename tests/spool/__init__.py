"""Tests of the disk spool (segmentio_logging/_spool/): real files, subprocesses and forks."""
