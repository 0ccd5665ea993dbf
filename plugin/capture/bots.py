"""Bot traffic: crawlers, headless tools and test addresses create nothing."""

from __future__ import annotations

from fnmatch import fnmatchcase

from ..config import BotsSettings


def is_bot(settings: BotsSettings, user_agent: str | None = None, email: str | None = None) -> bool:
    """Whether this capture comes from a bot (by User-Agent) or a crawler's test address."""
    if not settings.enabled:
        return False
    if user_agent:
        agent = user_agent.lower()
        if any(marker.lower() in agent for marker in settings.user_agents):
            return True
    if email:
        address = email.lower()
        return any(fnmatchcase(address, pattern.lower()) for pattern in settings.emails)
    return False
