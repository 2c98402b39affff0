"""How many SMS parts a text costs: GSM 03.38 7-bit or UCS-2, single or concatenated.

A text goes out as GSM-7 when every character is in the GSM 03.38 default alphabet or its extension
table (an extension character is sent as ESC + char, so it costs two septets); anything else (e.g.
Cyrillic) forces UCS-2 for the whole message, counted in UTF-16 code units (an emoji outside the
BMP costs two). A single SMS holds 160 septets or 70 UCS-2 units; a concatenated one loses room to
the user data header, leaving 153 and 67 per part. Parts never split an escape pair or a surrogate
pair, so the count matches what the SMSC actually sends, which can exceed ceil(units / 153).

Providers bill per part, and the segment count is what a "too long" cap should look at: SMS.ru
refuses more than 8 parts (its error 205); we stop earlier with `MAX_SEGMENTS`.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7 = "GSM-7"
UCS2 = "UCS-2"

# GSM 03.38 default alphabet (0x1B, the escape to the extension table, is not a character of its own).
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: each is sent as ESC + char, two septets.
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")

_LIMITS = {GSM7: (160, 153), UCS2: (70, 67)}  # (single message, each part of a concatenated one)

MAX_SEGMENTS = 6  # our cap: beyond this a marketing SMS is a letter, and a costly one


@dataclass(frozen=True)
class SegmentInfo:
    encoding: str  # GSM7 | UCS2
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int  # billed parts; an empty text still counts as one


def segments(text: str) -> SegmentInfo:
    """Encoding, size and part count of `text` as an SMS."""
    if all(char in _GSM_BASIC or char in _GSM_EXTENSION for char in text):
        encoding = GSM7
        widths = [2 if char in _GSM_EXTENSION else 1 for char in text]
    else:
        encoding = UCS2
        widths = [2 if ord(char) > 0xFFFF else 1 for char in text]
    units = sum(widths)
    single, per_part = _LIMITS[encoding]
    if units <= single:
        return SegmentInfo(encoding, units, 1)
    parts, used = 1, 0
    for width in widths:  # greedy packing: an escape or surrogate pair never straddles two parts
        if used + width > per_part:
            parts, used = parts + 1, 0
        used += width
    return SegmentInfo(encoding, units, parts)


def validate_length(text: str, max_segments: int = MAX_SEGMENTS) -> SegmentInfo:
    """The text's `SegmentInfo`; raises ValueError (with the counts) when it needs more than `max_segments` parts."""
    info = segments(text)
    if info.segments > max_segments:
        raise ValueError(
            f"SMS text needs {info.segments} segments ({info.encoding}, {info.units} units); the limit is {max_segments}"
        )
    return info
