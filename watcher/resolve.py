"""``isales-watcher ledger resolve``: an operator settles an uncertain file from iSales facts."""

from __future__ import annotations

from watcher.errors import ConfigError
from watcher.isales.client import IsalesClient
from watcher.ledger import Ledger
from watcher.models import FileRecord, ImportTask
from watcher.settings import Settings

__all__ = ("find_task", "resolve_imported")


async def find_task(settings: Settings, campaign_id: str, task_id: str) -> ImportTask | None:
    """The import task of the campaign with that id, read from iSales, or None."""
    async with IsalesClient(settings.isales) as client:
        return (await client.find_tasks(campaign_id, [task_id])).get(task_id)


async def resolve_imported(
    settings: Settings, ledger: Ledger, record: FileRecord, task_id: str, *, actor: str, reason: str
) -> FileRecord:
    """Make an uncertain file track the task the operator found; the daemon tracks it to its end.

    Raises:
        ConfigError: the task is not one of the campaign's (a typo, another campaign).
        TaskTakenError: another file owns that task.
    """
    owner = ledger.task_owner(record.campaign_id, task_id)
    if owner is not None and owner.id != record.id:
        raise ConfigError(f"task {task_id} already belongs to file {owner.id} ({owner.name})")
    task = await find_task(settings, record.campaign_id, task_id)
    if task is None:
        raise ConfigError(
            f"campaign {record.campaign_id} has no import task {task_id} in iSales; check the id"
        )
    return ledger.resolve(record.id, task_id=task_id, actor=actor, reason=reason)
