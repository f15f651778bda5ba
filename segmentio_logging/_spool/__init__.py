"""The durable disk spool: events wait on disk until the receiver accepted them.

``spool_path`` is a directory; each process writes its own SQLite file there,
holds it under a ``flock``, and claims the files of processes that are gone.
The design (file format, locks, orphans, bounds, crash safety, fork) is in
docs/spool.md.

Modules, bottom to top; each imports only the ones before it:

- ``_file``: one SQLite spool file (create, open, insert, read, delete, trim, shrink)
- ``_claim``: the files a process holds: its own, orphans claimed, locks, corrupt files
- ``_bounds``: ``spool_max_bytes`` and ``spool_max_age`` over those files
- ``_store``: :class:`Spool`, the storage's interface
- ``_counted``: the spool called one call at a time, with what it drops or loses counted
- ``_delivery``: :class:`SpoolDelivery`, the pipeline's delivery through the spool
"""

from __future__ import annotations

from ._delivery import SpoolDelivery
from ._file import FORMAT_VERSION
from ._store import DEFAULT_MAX_BYTES, Spool, SpoolKey

__all__ = ["DEFAULT_MAX_BYTES", "FORMAT_VERSION", "Spool", "SpoolDelivery", "SpoolKey"]
