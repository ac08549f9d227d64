"""Websocket consumers of the merges app: a job page's live progress."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from webapp.live import AuthenticatedJsonConsumer
from webapp.merges.selectors import merge_job_exists, merge_job_group


class MergeJobConsumer(AuthenticatedJsonConsumer):
    """Forwards a merge job's ``merge.progress`` messages to a signed-in browser (unknown job: closed 4404)."""

    async def group_names(self) -> list[str] | None:
        """Return the job's group, or None when there is no such job."""
        job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        if not await database_sync_to_async(merge_job_exists)(job_id):
            return None
        return [merge_job_group(job_id)]

    async def merge_progress(self, message: dict[str, Any]) -> None:
        """Send a progress message (event, new bundles, job) to the browser as it is."""
        await self.send_json(message["payload"])
