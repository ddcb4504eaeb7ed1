"""Mail saved in a wide encoding (UTF-16/32, as Windows tools write .eml files) made a MIME message again.

MIME is defined on octets: header names, the blank line and the boundaries are ASCII bytes. A file whose every
character is two or four bytes has none of them, so Tika's RFC822 parser finds no header and no body part and returns
nothing. Decoded and written back as UTF-8, the message is what its author sent; each part's own charset and transfer
encoding still apply (a base64 part keeps its bytes; an 8-bit part was text in the file and is now UTF-8)."""

from __future__ import annotations

import codecs
import re

# Longest first: a UTF-32-LE mark begins with the UTF-16-LE one.
_MARKS = [(codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
          (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")]
# Without a mark, ASCII text in a wide encoding shows where its zero bytes fall: (width, offset of the ASCII byte).
_LAYOUTS = [("utf-32-le", 4, 0), ("utf-32-be", 4, 3), ("utf-16-le", 2, 0), ("utf-16-be", 2, 1)]
_SNIFF = 512
# An RFC 5322 header field (printable ASCII name, a colon) or an mbox "From " line, at the start of the file.
_HEADER = re.compile(r"(?:From |[!-9;-~]+:)")
_FIELD = re.compile(r"^[!-9;-~]+:", re.M)


def wide_encoding(data: bytes) -> tuple[str, int]:
    """The wide encoding of `data` and the length of its byte-order mark, or ("", 0)."""
    for mark, name in _MARKS:
        if data.startswith(mark):
            return name, len(mark)
    head = data[:_SNIFF]
    for name, width, at in _LAYOUTS:
        units = len(head) // width
        if units < 8:
            continue
        zeros = sum(head[i * width + j] == 0 for i in range(units) for j in range(width) if j != at)
        ascii_ = sum(0 < head[i * width + at] < 128 for i in range(units))
        # Nearly every unit an ASCII byte padded with zeros: headers are ASCII, so a message starts that way.
        if zeros >= 0.9 * units * (width - 1) and ascii_ >= 0.9 * units:
            return name, 0
    return "", 0


def mail_as_utf8(data: bytes) -> bytes:
    """`data` unchanged unless it is a mail message in a wide encoding; then the same message in UTF-8."""
    encoding, skip = wide_encoding(data)
    if not encoding:
        return data
    text = data[skip:].decode(encoding, errors="replace")
    head = text.lstrip("\r\n")[:4096]
    header = re.split(r"\r?\n\r?\n", head, maxsplit=1)[0]
    # A message, not some other text file that happens to be UTF-16 (those Tika's text parsers decode already).
    if not _HEADER.match(head) or len(_FIELD.findall(header)) < 2:
        return data
    return text.encode("utf-8", errors="replace")
