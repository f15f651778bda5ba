"""Log records to what the handler's queue holds, and what it holds to Segment messages.

:meth:`RecordMapper.capture` runs on the caller's thread, in ``emit``: it
keeps what cannot wait and nothing else. :meth:`RecordMapper.encode` runs on
the worker: it turns a capture into the bytes that are sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Tuple, Union

from . import _json  # read as _json.PLAIN_JSON at each call: tests and benchmarks switch it off
from ._captured import (
    GENERAL,
    KIND,
    TRACK_NAMED_BY_EVENT,
    TRACK_NAMED_BY_TEXT,
    Captured,
    GeneralCapture,
    TrackCapture,
    TrackKind,
)
from ._errors import InvalidMessage, SegmentError
from ._json import MAX_DEPTH, PLAIN_OPTIONS, error_text, plain_json, safe_str
from ._lifecycle import marked_busy
from ._message import build_message, checked_size, dict_field, plain_track, plain_track_json
from ._message import encode as encode_message
from ._segment import (
    IDENTITY_ATTR,
    MAX_MESSAGE_BYTES,
    RECORD_ATTR_COUNT,
    RESERVED_FIELDS,
    SESSION_ID,
    STANDARD_RECORD_ATTRS,
)
from ._snapshot import MUTABLE_FIELDS, SCALARS, copy_tree, snapshot, snapshot_value

__all__ = ["RecordMapper"]


def _copied(value: Any) -> Any:
    """:func:`snapshot` of a field; the field itself when it cannot be read (its
    ``items()`` raises), for the worker to report as it builds the message."""
    try:
        return snapshot(value)
    except Exception:
        return value


def _formatted(record: logging.LogRecord) -> str:
    """The record's message with its arguments; its bare ``msg`` when formatting fails.

    The thread is marked busy meanwhile: formatting runs the arguments' ``__str__``, and
    what they log must not come back to the handler."""
    with marked_busy():
        try:
            return record.getMessage()
        except Exception:
            return safe_str(record.msg)


class RecordMapper:
    """Maps ``LogRecord`` objects to Segment messages, in two steps.

    :meth:`capture` runs on the logging thread and does only what cannot wait:
    it reads the ids (a record without one is skipped), copies the mutable
    fields (``properties``, ``traits``...) so that a caller that changes its
    dict after logging does not change what is sent, and formats the message
    when it has arguments. :meth:`encode` runs on the worker and makes the
    message's bytes from that capture (:meth:`build`, the message itself).
    """

    __slots__ = (
        "_aid",
        "_attrs",
        "_capture_extra",
        "_event_attr",
        "_general_attrs",
        "_mutable_attrs",
        "_not_track",
        "_properties_attr",
        "_reserved_attrs",
        "_session_attr",
        "_uid",
    )

    def __init__(
        self, field_names: Optional[Mapping[str, str]] = None, capture_extra: bool = False
    ):
        names = {key: key for key in RESERVED_FIELDS}
        names.update(field_names or {})
        self._uid = names["user_id"]
        self._aid = names["anonymous_id"]
        self._session_attr = SESSION_ID if names["anonymous_id"] == "anonymous_id" else None
        self._attrs: Tuple[Tuple[str, str], ...] = tuple(
            sorted(
                (key, attr) for key, attr in names.items() if key not in ("user_id", "anonymous_id")
            )
        )
        self._mutable_attrs = tuple(names[key] for key in MUTABLE_FIELDS)
        self._event_attr = names["event"]
        self._properties_attr = names["properties"]
        # Any of these on a record takes it off the plain-track path of build().
        self._general_attrs = frozenset(
            attr
            for key, attr in names.items()
            if key not in ("user_id", "anonymous_id", "event", "properties")
        )
        self._reserved_attrs = frozenset(names.values()) | {SESSION_ID}
        # Any of these takes a record off capture()'s first path, to the one that reads them.
        not_track = {*self._general_attrs, IDENTITY_ATTR}
        if self._session_attr is not None:
            not_track.add(self._session_attr)
        self._not_track = frozenset(not_track)
        self._capture_extra = capture_extra
        clash = sorted(self._reserved_attrs & STANDARD_RECORD_ATTRS)
        if clash:
            raise ValueError(
                f"field_names: {', '.join(clash)} is a LogRecord attribute and cannot carry "
                "a Segment field"
            )

    # ----------------------------------------------------------- the caller's thread

    def capture(
        self, record: logging.LogRecord, bound: Optional[Mapping[str, Any]] = None
    ) -> Optional[Captured]:
        """What to keep of ``record``, or ``None`` when it carries no user or anonymous id.

        An id of ``None`` or ``""`` counts as none: such a record is skipped, not an error.
        ``bound`` is the identity bound to the caller's context (``user_id``,
        ``anonymous_id``, ``context``, ``integrations``): it fills what the record
        does not say itself. Without it, what ``BoundIdentityFilter`` copied onto the
        record does.
        """
        attrs = record.__dict__
        uid = attrs.get(self._uid)
        aid = attrs.get(self._aid)
        if bound is None and not self._capture_extra:
            event = attrs.get(self._event_attr)
            properties = attrs.get(self._properties_attr)
            # The common case: nothing bound, and none of the attributes that make a record
            # more than a plain track (a session id or a copied identity among them). Told
            # first by counting: LogRecord's own attributes, plus the fields read here that
            # are set, leave room for no other; else by looking for each of those names.
            if (
                len(attrs)
                == RECORD_ATTR_COUNT
                + (uid is not None)
                + (aid is not None)
                + (event is not None)
                + (properties is not None)
            ) or self._not_track.isdisjoint(attrs):
                # Inline tests of "no id" (None or ""): this runs on the caller's thread.
                if (uid is None or uid == "") and (aid is None or aid == ""):
                    return None
                track = self._capture_track(record, uid, aid, event, properties)
                if track is not None:
                    return track
                return self._capture_general(record, attrs, uid, aid, None)
        return self._capture_with_bound(record, attrs, uid, aid, bound)

    def _capture_with_bound(
        self,
        record: logging.LogRecord,
        attrs: Dict[str, Any],
        uid: Any,
        aid: Any,
        bound: Optional[Mapping[str, Any]],
    ) -> Optional[GeneralCapture]:
        """:meth:`capture` of any other record: the bound identity (or the one
        ``BoundIdentityFilter`` copied) and a session id fill the ids it lacks."""
        if bound is None:
            bound = attrs.get(IDENTITY_ATTR)
        if (aid is None or aid == "") and self._session_attr is not None:
            aid = attrs.get(self._session_attr)
        if bound:
            if uid is None or uid == "":
                uid = bound.get("user_id")
            if aid is None or aid == "":
                aid = bound.get("anonymous_id")
        if (uid is None or uid == "") and (aid is None or aid == ""):
            return None
        return self._capture_general(record, attrs, uid, aid, bound)

    def _capture_general(
        self,
        record: logging.LogRecord,
        attrs: Dict[str, Any],
        uid: Any,
        aid: Any,
        bound: Optional[Mapping[str, Any]],
    ) -> GeneralCapture:
        """The capture of any record that is not a plain track: copies of its mutable
        fields, its formatted text when it has arguments, the other attributes when the
        mapper captures them, and its fields without a traceback."""
        # Copies of the mutable fields that are not scalars. Inline: as a method of their
        # own they cost this path, on the caller's thread, 2 to 4% more.
        copies: Optional[Dict[str, Any]] = None
        for attr in self._mutable_attrs:
            value = attrs.get(attr)
            if value is None or type(value) in SCALARS:
                continue
            if copies is None:
                copies = {}
            if type(value) is dict:  # snapshot's common case, without the call
                for item in value.values():
                    if type(item) not in SCALARS:
                        copies[attr] = copy_tree(value, {}, 0)
                        break
                else:
                    copies[attr] = value.copy()
            else:
                copies[attr] = _copied(value)
        text: Optional[str] = None
        if record.args or type(record.msg) is not str:
            text = _formatted(record)
        extra: Optional[Dict[str, Any]] = None
        if self._capture_extra:
            extra = self._snapshot_extra(attrs)
        fields: Mapping[str, Any] = attrs
        if record.exc_info or record.stack_info:
            fields = self._fields_without_traceback(record, attrs)
        return (GENERAL, fields, uid, aid, copies, text, extra or None, bound, record.created)

    def _snapshot_extra(self, attrs: Dict[str, Any]) -> Dict[str, Any]:
        """Snapshots of the record's own attributes: neither LogRecord's, nor reserved,
        nor private."""
        reserved = self._reserved_attrs
        return {
            key: snapshot_value(value)
            for key, value in attrs.items()
            if key not in STANDARD_RECORD_ATTRS and key not in reserved and key[:1] != "_"
        }

    def _fields_without_traceback(
        self, record: logging.LogRecord, attrs: Dict[str, Any]
    ) -> Dict[str, Any]:
        """The reserved fields and ``msg`` alone: a traceback (and its frames) is not kept
        alive in the queue."""
        kept = {attr: attrs[attr] for attr in self._reserved_attrs if attr in attrs}
        kept["msg"] = record.msg
        return kept

    def _capture_track(
        self, record: logging.LogRecord, uid: Any, aid: Any, event: Any, properties: Any
    ) -> Optional[TrackCapture]:
        """The capture of a plain track record (string ids and event, a dict of properties
        or none, no other reserved field), else ``None``. Snapshots the properties as JSON
        when they hold only JSON's own types: one call, and nothing the collector scans."""
        if (uid is not None and type(uid) is not str) or (aid is not None and type(aid) is not str):
            return None
        kind: TrackKind = TRACK_NAMED_BY_EVENT
        if event is None:
            kind = TRACK_NAMED_BY_TEXT
            event = record.msg
            if record.args or type(event) is not str:
                event = _formatted(record)
        if type(event) is not str or not event:
            return None
        kept: Union[str, Dict[str, Any], None] = None
        if type(properties) is dict:
            kept = _kept_track_properties(properties)
            if kept is None:
                return None
        elif properties is not None:
            return None
        return (kind, uid, aid, event, kept, record.created)

    # ------------------------------------------------------------------- the worker

    def encode(self, item: Captured) -> Tuple[Optional[Dict[str, Any]], bytes]:
        """On the worker: the message for a capture and its JSON, checked against
        the 32 KB limit.

        The message is always ``None``: a plain track is spliced as bytes without a
        dict, and callbacks get every record's message decoded from what was sent,
        whichever path made it. Raises :class:`InvalidMessage` (or
        :class:`MessageTooLarge`), and nothing else: what a value raises as it is
        read becomes an ``InvalidMessage``.
        """
        try:
            if item[KIND] != GENERAL:
                _, uid, aid, event, properties, created = item  # the TRACK_* layout
                # Spliced as text: orjson's JSON from the capture, or the standard library's.
                if properties is None:
                    text: Optional[str] = "{}"
                elif type(properties) is str:
                    text = properties
                else:
                    text = plain_json(properties)
                if text is not None:
                    data = plain_track_json(uid, aid, event, text, created)
                    if data is not None:
                        return None, data if len(data) <= MAX_MESSAGE_BYTES else checked_size(data)
            return None, encode_message(self.build(item))
        except SegmentError:
            raise
        except Exception as exc:
            raise InvalidMessage(f"could not build the message: {error_text(exc)}") from exc

    def build(self, item: Captured) -> Dict[str, Any]:
        """The message for a capture; raises :class:`InvalidMessage`."""
        if item[KIND] != GENERAL:
            message = _plain_track_of(item)
            return message if message is not None else self.build_captured(_describe_track(item))
        _, fields, uid, aid, copies, text, extra, bound, created = item  # the GENERAL_* layout
        if bound is None and extra is None and self._general_attrs.isdisjoint(fields):
            # A plain track (the common case): built without the general path's dict.
            event = fields.get(self._event_attr)
            if event is None:
                event = text if text is not None else fields.get("msg")
            properties = copies.get(self._properties_attr) if copies else None
            if properties is None:
                properties = fields.get(self._properties_attr)
            message = plain_track(uid, aid, event, properties, created)
            if message is not None:
                return message
        return self.build_captured(self._describe_general(item))

    def describe(self, item: Captured) -> Dict[str, Any]:
        """A capture's fields by their reserved names (``user_id``, ``event``, ``properties``...),
        plus ``created`` and the formatted ``text``: what callbacks see of a record that
        could not become a message."""
        if item[KIND] != GENERAL:
            return _describe_track(item)
        return self._describe_general(item)

    def _describe_general(self, item: GeneralCapture) -> Dict[str, Any]:
        """:meth:`describe` of a general capture: the bound identity fills what it lacks."""
        _, fields, uid, aid, copies, text, extra, bound, created = item  # the GENERAL_* layout
        captured: Dict[str, Any] = {"user_id": uid, "anonymous_id": aid, "created": created}
        for key, attr in self._attrs:
            if attr in fields:
                captured[key] = fields[attr]
        if copies:
            for key, attr in zip(MUTABLE_FIELDS, self._mutable_attrs):
                if attr in copies:
                    captured[key] = copies[attr]
        if bound:
            _merge_bound(captured, bound)
        if captured.get("event") is None or "segment_type" in captured:
            captured["text"] = text if text is not None else fields.get("msg")
        if extra:
            captured["extra"] = extra
        return captured

    @staticmethod
    def build_captured(captured: Mapping[str, Any]) -> Dict[str, Any]:
        """The message for the fields of a capture, by Segment field name."""
        if captured.keys() <= _PLAIN_TRACK_KEYS:
            event = captured.get("event")
            message = plain_track(
                captured["user_id"],
                captured["anonymous_id"],
                captured.get("text") if event is None else event,
                captured.get("properties"),
                captured["created"],
            )
            if message is not None:
                return message
        get = captured.get
        kind = _message_type(get)
        properties = get("properties")
        traits = get("traits")
        extra = get("extra")
        if extra:
            # Explicit properties or traits win over the record's other attributes.
            if kind in ("identify", "group"):
                traits = {**extra, **(dict_field(traits, "traits") or {})}
            elif kind != "alias":
                properties = {**extra, **(dict_field(properties, "properties") or {})}
        event = get("event")
        name = None
        if kind == "track" and event is None:
            event = get("text")
        elif kind in ("page", "screen"):
            name = get("text")
        return build_message(
            kind,
            user_id=get("user_id"),
            anonymous_id=get("anonymous_id"),
            event=event,
            name=name,
            category=get("category"),
            properties=properties,
            traits=traits,
            context=get("context"),
            integrations=get("integrations"),
            timestamp=get("timestamp"),
            message_id=get("message_id"),
            group_id=get("group_id"),
            previous_id=get("previous_id"),
            created=get("created"),
        )


# A capture described with only these keys is most likely a plain track: see plain_track.
_PLAIN_TRACK_KEYS = frozenset({"user_id", "anonymous_id", "created", "text", "event", "properties"})


def _describe_track(item: TrackCapture) -> Dict[str, Any]:
    """:meth:`RecordMapper.describe` of a plain track capture."""
    kind, uid, aid, event, properties, created = item  # the TRACK_* layout
    named = kind == TRACK_NAMED_BY_EVENT
    described: Dict[str, Any] = {"user_id": uid, "anonymous_id": aid, "created": created}
    if named:
        described["event"] = event
    if properties is not None:
        described["properties"] = _track_properties(properties)
    if not named:
        described["text"] = event
    return described


def _merge_bound(captured: Dict[str, Any], bound: Mapping[str, Any]) -> None:
    """The bound ``context`` and ``integrations`` under the record's own: its keys win."""
    for key in ("context", "integrations"):
        outer = bound.get(key)
        if outer:
            own = captured.get(key)
            captured[key] = {**outer, **own} if isinstance(own, Mapping) else own or outer


def _message_type(get: Callable[[str], Any]) -> Any:
    """The ``segment_type`` of described fields (read with ``get``), tidied; else the type
    their fields imply."""
    kind = get("segment_type")
    if isinstance(kind, str):
        return str.strip(kind).lower()  # not a subclass's own strip()
    if kind is not None:
        return kind  # not a type: build_message reports it
    if get("previous_id") is not None:
        return "alias"
    if get("group_id") is not None:
        return "group"
    if get("traits") is not None and get("event") is None:
        return "identify"
    return "track"


def _kept_track_properties(properties: Dict[str, Any]) -> Union[str, Dict[str, Any], None]:
    """A plain track's properties as its capture keeps them: their JSON when orjson is
    there, else a snapshot; ``None`` when they need the general path."""
    plain_json = _json.PLAIN_JSON
    if plain_json is None:
        # snapshot() of a dict, without the call: this is the caller's thread.
        for item in properties.values():
            if type(item) not in SCALARS:
                copied: Dict[str, Any] = copy_tree(properties, {}, 0)
                return copied
        return properties.copy()
    try:
        # As str: orjson's bytes keep a 4 KB buffer each, which a queue would hold.
        kept: str = plain_json(properties, option=PLAIN_OPTIONS).decode()
    except Exception:  # not only JSON's own types: the general path converts them
        return None
    if len(kept) > 2 * MAX_DEPTH and kept.count("{") + kept.count("[") > MAX_DEPTH:
        return None  # perhaps nested deeper than the general path's cut
    return kept


def _track_properties(properties: Union[str, Dict[str, Any], None]) -> Any:
    """A plain track capture's properties as a dict again (or None)."""
    return json.loads(properties) if type(properties) is str else properties


def _plain_track_of(item: TrackCapture) -> Optional[Dict[str, Any]]:
    _, uid, aid, event, properties, created = item
    return plain_track(uid, aid, event, _track_properties(properties), created)
