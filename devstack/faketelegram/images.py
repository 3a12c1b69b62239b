"""What Telegram's photo processing reads of an uploaded image: its width and height.

sendPhoto takes JPEG, PNG, GIF, WebP and BMP images; bytes that are none of them fail as on
Telegram ("IMAGE_PROCESS_FAILED"). Only the header is read, never the whole image.
"""

from __future__ import annotations

import struct

# JPEG's frame headers, which carry the size; C4, C8 and CC share the range but are not frames.
JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Enough for a JPEG whose EXIF and colour profile come before its frame header.
HEAD_SIZE = 512 * 1024


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) of the image these bytes begin, or None if they begin no image we read."""
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", head[6:10])
        if head.startswith(b"BM"):
            width, height = struct.unpack("<ii", head[18:26])
            return width, abs(height)
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head.startswith(b"\xff\xd8"):
            return _jpeg_size(head)
    except struct.error:
        return None
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        b0, b1, b2, b3 = head[21:25]
        return 1 + (((b1 & 0x3F) << 8) | b0), 1 + (((b3 & 0x0F) << 10) | (b2 << 2) | ((b1 & 0xC0) >> 6))
    if chunk == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    index = 2
    while index + 9 <= len(head):
        if head[index] != 0xFF:
            return None
        marker = head[index + 1]
        if marker == 0xFF:
            # Fill bytes before a marker.
            index += 1
            continue
        if marker in JPEG_FRAMES:
            height, width = struct.unpack(">HH", head[index + 5 : index + 9])
            return width, height
        (length,) = struct.unpack(">H", head[index + 2 : index + 4])
        index += 2 + length
    return None
