"""The file parts of a small, plainly formed multipart/form-data body, split in a few slices.

Starlette's form parser (python-multipart's state machine, callbacks per header and per chunk,
an UploadFile over a SpooledTemporaryFile per part, a FormData) took ~80 us of a ~400 us PNG
/predict request on this machine: a fifth of the request's own CPU (py-spy, bench/RESULTS.md).
An upload from a browser, curl, httpx or requests is a few parts in one plain layout, and a
body of at most SMALL_BODY_BYTES is read whole anyway. `split_files` takes exactly that layout:

    --BOUNDARY CRLF headers CRLF CRLF data (CRLF --BOUNDARY CRLF headers CRLF CRLF data)*
    CRLF --BOUNDARY -- [CRLF]

every part a file (`filename` given), headers as python-multipart accepts them (token names,
at most its count and size), a utf-8 (or no) charset. For anything else (a text field, a
preamble or epilogue, a delimiter-like line inside the data, too many files, a malformed
header) it returns None, and Starlette's parser reads the body with its own limits and
answers its own errors: nothing that one refuses is accepted here, and what is accepted comes
out as it would from Starlette (names and filenames through the same `parse_options_header`
and decoding). tests/test_formparts.py checks both against each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import (
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_HEADER_SIZE,
    TOKEN_CHARS,
    parse_options_header,
)

# Bodies up to this are split here; Starlette keeps file parts in memory up to the same size.
SMALL_BODY_BYTES = 1024 * 1024
CHARSETS = (None, b"utf-8", b"UTF-8", b"utf8")


@dataclass(frozen=True, slots=True)
class FilePart:
    field: str
    filename: str
    data: bytes


def _text(raw: bytes) -> str:
    # Starlette's decoding of names and filenames: the charset (utf-8), else latin-1.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _disposition(headers: bytes) -> bytes | None:
    """The part's (last) Content-Disposition value; None for headers python-multipart refuses
    or would read differently."""
    lines = headers.split(b"\r\n")
    if len(lines) > DEFAULT_MAX_HEADER_COUNT:
        return None
    disposition = None
    for line in lines:
        name, colon, value = line.partition(b":")
        if (
            not colon
            or not name
            or name.translate(None, TOKEN_CHARS)  # a character outside the HTTP token set
            or len(line) >= DEFAULT_MAX_HEADER_SIZE
            or b"\r" in value
            or b"\n" in line
        ):
            return None
        if name.lower() == b"content-disposition":
            disposition = value.lstrip(b" ")
    return disposition


def split_files(body: bytes, content_type: str, max_files: int) -> list[FilePart] | None:
    """The file parts in order, or None when the body is not in the plain layout (see above)."""
    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary or params.get(b"charset") not in CHARSETS:
        return None
    if not body.startswith(b"--" + boundary + b"\r\n"):
        return None
    # After each delimiter: CRLF and a part, or "--" and the end.
    *pieces, last = (b"\r\n" + body).split(b"\r\n--" + boundary)
    if pieces[0] or len(pieces) < 2 or last not in (b"--", b"--\r\n"):
        return None
    if len(pieces) - 1 > max_files:
        return None  # Starlette words the refusal
    parts = []
    for piece in pieces[1:]:
        if not piece.startswith(b"\r\n") or piece.startswith(b"\r\n\r\n"):
            return None
        headers, blank, data = piece[2:].partition(b"\r\n\r\n")
        disposition = _disposition(headers) if blank else None
        if disposition is None:
            return None
        _, options = parse_options_header(disposition)
        if b"name" not in options or b"filename" not in options:
            return None  # no name (an error) or a text field: Starlette's limits and errors
        parts.append(FilePart(_text(options[b"name"]), _text(options[b"filename"]), data))
    return parts
