"""kombu's filesystem transport, with each message written whole before it can be read.

kombu's own ``_put`` creates the message file under its final name and then
writes it: a worker polling the folder can take the empty file in between and
die of a JSON error. That happens when a pool process publishes (a chain's next
step, a retry) while the worker polls. Writing under another name and renaming
closes the gap; the reader ignores names that do not end in ``.<queue>.msg``.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from kombu.transport import filesystem  # type: ignore[import-untyped]
from kombu.utils.json import dumps  # type: ignore[import-untyped]


class Channel(filesystem.Channel):  # type: ignore[misc]
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{int(filesystem.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"
        with open(partial, "wb") as file:
            file.write(dumps(payload).encode("utf-8"))
        os.replace(partial, final)


class Transport(filesystem.Transport):  # type: ignore[misc]
    Channel = Channel
