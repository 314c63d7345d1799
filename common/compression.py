"""The end-of-stream check for compressed files: the one definition preprocessing (raw .gz/.bz2 logs, read through
Beam's FileSystems) and training (GZIP TFRecord shards, read through tf.io.gfile) share.

Why it exists: both readers stop silently where a truncated stream ends (Beam's text reader, and TensorFlow's
GZIP reader whenever the cut falls on a record boundary), so the rows after the cut would vanish without a count.
The decompressor sees the missing end-of-stream marker. Callers pass an opener, so this module needs no file
system of its own and works on gs:// and hdfs:// through theirs.
"""

from __future__ import annotations

import bz2
import zlib
from typing import BinaryIO, Callable

DECOMPRESSORS: dict[str, Callable[[], object]] = {
    "gzip": lambda: zlib.decompressobj(zlib.MAX_WBITS | 16),
    "bzip2": bz2.BZ2Decompressor,
}
SUFFIXES = {".gz": "gzip", ".bz2": "bzip2"}
MAX_OUT = 1 << 24  # decompressed bytes per call: memory stays bounded even for a highly compressible stream


def kind_of(path: str) -> str | None:
    """"gzip" / "bzip2" by the file's suffix, None for an uncompressed name."""
    return next((kind for suffix, kind in SUFFIXES.items() if path.endswith(suffix)), None)


def _drain(d, data: bytes) -> bytes:
    """Decompress `data` to nowhere in bounded steps; returns the bytes after this stream's end (a next member)."""
    d.decompress(data, MAX_OUT)
    while not d.eof:
        if isinstance(d, bz2.BZ2Decompressor):
            if d.needs_input:  # everything given so far is decompressed
                return b""
            d.decompress(b"", MAX_OUT)
        else:
            if not d.unconsumed_tail:
                return b""
            d.decompress(d.unconsumed_tail, MAX_OUT)
    return d.unused_data


def stream_error(open_binary: Callable[[], BinaryIO], kind: str = "gzip", chunk_bytes: int = 1 << 20) -> str | None:
    """Why the stream `open_binary()` returns does not decompress to its end-of-stream marker, or None when it does.

    Streams the file once (bounded memory; concatenated members allowed). Any failure to open, read or decompress
    is reported as a corrupt stream, naming the byte offset reached.
    """
    if kind not in DECOMPRESSORS:
        raise ValueError(f"compression kind {kind!r} is not one of {', '.join(DECOMPRESSORS)}")
    new = DECOMPRESSORS[kind]
    d, seen = new(), 0
    try:
        with open_binary() as fh:
            while chunk := fh.read(chunk_bytes):
                seen += len(chunk)
                while chunk:
                    if d.eof:  # the next member of a concatenated file
                        d = new()
                    chunk = _drain(d, chunk)
    except Exception as e:  # noqa: BLE001 - any open, read or decompression failure means an unusable input
        return f"corrupt {kind} stream near byte {seen} ({type(e).__name__}: {e})"
    if not d.eof:
        return (f"truncated: the {kind} stream stops at byte {seen} without its end-of-stream marker (the data "
                f"after the cut is lost)")
    return None
