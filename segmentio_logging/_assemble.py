"""A handler's or client's pipeline, built from its options.

The one place that knows both deliveries: the transport the options describe,
the spool delivery when ``spool_path`` is set (in memory otherwise), and the
user's hooks (``before_send``, ``default_context``) around the encode step.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ._hooks import with_hooks
from ._message import Encode
from ._options import Options
from ._pipeline import Pipeline, already_encoded
from ._transport import transport_for


def make_pipeline(
    options: Options,
    encode: Optional[Encode] = None,
    describe: Optional[Callable[[Any], Any]] = None,
) -> Pipeline:
    """The queue, worker, transport and (with ``spool_path``) disk spool of ``options``.

    ``encode`` turns a queued item into its message and bytes, on the worker (by
    default items are queued encoded); ``describe``, an item into what
    ``on_failure`` receives when it cannot be sent.
    """
    settings: Dict[str, Any] = {
        "batch_size": options.batch_size,
        "flush_interval": options.flush_interval,
        "max_queue_size": options.max_queue_size,
        "shutdown_timeout": options.shutdown_timeout,
        "max_in_flight": options.max_in_flight,
        "on_success": options.on_success,
        "on_failure": options.on_failure,
        "sync_mode": options.sync_mode,
        "handle_sigterm": options.handle_sigterm,
    }
    if describe is not None:
        settings["describe"] = describe
    if options.spool_path is not None:
        # sqlite3 is only imported when a spool is used.
        from ._spool import Spool, SpoolDelivery

        spool = Spool(
            options.spool_path, max_bytes=options.spool_max_bytes, max_age=options.spool_max_age
        )
        settings["delivery"] = SpoolDelivery(spool)
    hooked = with_hooks(encode or already_encoded, options.before_send, options.default_context)
    return Pipeline(transport_for(options), encode=hooked, **settings)
