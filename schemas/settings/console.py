"""Settings of the admin console served by the api under /ui (docs/console.md)."""

from __future__ import annotations

from typing import ClassVar

from llmq.schemas.settings.base import Command, Group, setting


class ConsoleSettings(Group):
    """The browser console: sessions and whether it is served at all."""

    commands: ClassVar[tuple[Command, ...]] = ("api",)

    console_enabled: bool = setting(True, "Serve the admin console under /ui.")
    console_session_hours: float = setting(8.0, "Hours a console session cookie stays valid.", gt=0)
    console_secret: str = setting(
        "",
        "Key that signs console session cookies (shared by every api replica); empty: "
        "derived from LLMQ_ADMIN_TOKEN, or random per process when that is empty too.",
        secret=True,
        repr=False,
    )
