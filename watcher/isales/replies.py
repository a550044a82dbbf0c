"""What iSales answers, read with care: every field's shape is checked, every message is ours.

A reply of an unexpected shape (a ``null`` entry, a string where a list belongs, a count that is
not a number) is one :class:`~watcher.errors.ApiReplyError` naming the call and the field, never
a ``TypeError`` deep in the daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from watcher.errors import ApiReplyError
from watcher.models import ImportTask, escaped

_MAX_TEXT = 4000

__all__ = (
    "RESULT_MESSAGES",
    "FileServer",
    "TaskPage",
    "count_of",
    "describe_code",
    "items",
    "read_server",
    "read_task",
    "shown",
)

RESULT_MESSAGES = {
    "0200001": "iSales refused a parameter",
    "0200006": "iSales had a database error",
    "0200007": "the campaign does not exist: check campaign_id of the route",
    "0200022": "iSales says it is called too frequently",
    "0200033": "the outbound call data does not exist",
    "0200034": "the sub-status does not match the business result",
    "02000001": "a required parameter is empty",
    "02000002": "a parameter contains invalid characters",
    "02000003": "a parameter is too long",
    "02000004": "a parameter is too short",
    "02000005": "a parameter's length is out of range",
    "02000006": "a parameter has the wrong type",
    "02000007": "a parameter has a wrong value",
    "02000008": "a parameter could not be converted",
    "02000009": "the combination of parameters is invalid",
    "02000010": "hour and minute must be given together",
    "02000011": "too many parameters",
}


def describe_code(code: str, desc: str | None) -> str:
    """A plain message for a result code, with the server's own words when it gave any."""
    known = RESULT_MESSAGES.get(code, "iSales refused the request")
    return f"{known}: {desc}" if desc and desc not in known else known


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of ``queryDataImportTask``: the tasks and the total the server reports."""

    tasks: list[ImportTask]
    total: int


@dataclass(frozen=True, slots=True)
class FileServer:
    """A file server registered in iSales."""

    server_id: str
    ip: str | None
    port: str | None
    user_name: str | None
    file_path: str | None


def shown(value: object, limit: int = 80) -> str:
    """A value from the peer, safe to put in a message: printable, short."""
    text = str(value)
    return escaped(text[:limit]) + ("..." if len(text) > limit else "")


def items(reply: Mapping[str, Any], key: str, call: str) -> list[Mapping[str, Any]]:
    """A list of objects in a reply; ``null`` or missing is an empty list."""
    value = reply.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiReplyError(f"{call}: field {key!r} is {type(value).__name__}, expected a list")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ApiReplyError(
                f"{call}: {key}[{index}] is {type(item).__name__}, expected an object"
            )
    return value


def count_of(reply: Mapping[str, Any], call: str, default: int) -> int:
    value = reply.get("count")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ApiReplyError(f"{call}: field 'count' is {type(value).__name__}, expected a number")
    try:
        return int(value)
    except ValueError:
        raise ApiReplyError(f"{call}: field 'count' is {shown(value)!r}, not a number") from None


def text_of(item: Mapping[str, Any], key: str, where: str) -> str | None:
    """A field that must be a string (a number is accepted as its digits), or null."""
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ApiReplyError(f"{where}: field {key!r} is {type(value).__name__}, expected a string")


def number_of(item: Mapping[str, Any], key: str, where: str) -> int | None:
    value = item.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ApiReplyError(f"{where}: field {key!r} is {type(value).__name__}, expected a number")
    try:
        return int(value)
    except ValueError:
        raise ApiReplyError(f"{where}: field {key!r} is {shown(value)!r}, not a number") from None


def read_task(item: Mapping[str, Any], index: int) -> ImportTask:
    where = f"queryDataImportTask: result[{index}]"
    task_id = text_of(item, "id", where)
    if not task_id:
        raise ApiReplyError(f"{where}: the task has no 'id'")
    begin_time = item.get("beginTime")
    if begin_time is not None and not isinstance(begin_time, str):
        raise ApiReplyError(
            f"{where}: field 'beginTime' is {type(begin_time).__name__}, expected a string"
        )
    return ImportTask(
        task_id=task_id,
        status=text_of(item, "status", where) or "",
        succ_num=number_of(item, "succNum", where),
        repeat_num=number_of(item, "repeatNum", where),
        fail_num=number_of(item, "failNum", where),
        black_num=number_of(item, "blackNum", where),
        err_msg=str(item.get("errMsg") or "")[:_MAX_TEXT],  # the client redacts and cuts it
        begin_time=begin_time,
        end_time=text_of(item, "endTime", where),
    )


def read_server(item: Mapping[str, Any], index: int) -> FileServer | None:
    where = f"queryServer: server[{index}]"
    server_id = text_of(item, "serverId", where)
    if not server_id:
        return None  # an entry without an id cannot be chosen
    return FileServer(
        server_id=server_id,
        ip=text_of(item, "ip", where),
        port=text_of(item, "port", where),
        user_name=text_of(item, "userName", where),
        file_path=text_of(item, "filePath", where),
    )
