"""Recognising automated link fetches, so click statistics count people, not security scanners.

Mail security gateways and chat apps fetch every link in a message to check or preview it; the
user agents below are the common ones. A match is still redirected (the scanner may need the
target) but recorded as non-human.
"""

from __future__ import annotations

import re

_AUTOMATED = re.compile(
    r"bot\b|crawler|spider|preview|scanner|python-requests|curl/|wget/|go-http-client|httpx|okhttp|"
    r"barracuda|proofpoint|mimecast|safelinks|symantec|trendmicro|forcepoint|googleimageproxy|"
    r"telegrambot|vkshare|whatsapp/|facebookexternalhit|slackbot|skypeuripreview",
    re.IGNORECASE,
)


def looks_automated(user_agent: str) -> bool:
    return not user_agent.strip() or bool(_AUTOMATED.search(user_agent))
