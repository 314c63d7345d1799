"""GZIP TFRecord files written with zlib level 1 through Beam's FileBasedSink (temp files + atomic finalize).

Beam's WriteToTFRecord compresses with zlib's default level 6, which cost ~40 us per 1 KB example here (a
third of the whole per-row budget). Level 1 is ~3x faster for ~10-15 % larger files, and the output is still
standard gzip that tf.data.TFRecordDataset(compression_type="GZIP") reads. Framing per record (TFRecord):
uint64 length, masked crc32c(length), data, masked crc32c(data).
"""

from __future__ import annotations

import struct
import zlib

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

_BUFFER_BYTES = 1 << 18


def _crc32c_fn():
    try:
        import google_crc32c  # optional C implementation
        return google_crc32c.value
    except ImportError:
        import crcmod.predefined  # installed with apache-beam[tfrecord]
        return crcmod.predefined.mkPredefinedCrcFun("crc-32c")


def masked_crc32c(data: bytes, crc=None) -> int:
    crc = (crc or _crc32c_fn())(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _GzipWriter:
    """Buffers framed records and gzip-compresses them in large chunks at a chosen level."""

    def __init__(self, raw, level: int):
        self._raw = raw
        self._zip = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip container
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= _BUFFER_BYTES:
            self._drain()

    def _drain(self) -> None:
        self._raw.write(self._zip.compress(b"".join(self._parts)))
        self._parts, self._size = [], 0

    def close(self) -> None:
        self._drain()
        self._raw.write(self._zip.flush())
        self._raw.close()


class GzipTFRecordSink(filebasedsink.FileBasedSink):
    def __init__(self, file_path_prefix: str, file_name_suffix: str, num_shards: int, level: int = 1):
        super().__init__(file_path_prefix, coder=BytesCoder(), file_name_suffix=file_name_suffix,
                         num_shards=num_shards, mime_type="application/octet-stream",
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self._level = level
        self._crc = None

    def open(self, temp_path):
        self._crc = _crc32c_fn()
        return _GzipWriter(FileSystems.create(temp_path, self.mime_type, CompressionTypes.UNCOMPRESSED),
                           self._level)

    def write_encoded_record(self, file_handle, value):
        length = struct.pack("<Q", len(value))
        file_handle.write(length + struct.pack("<I", masked_crc32c(length, self._crc)) + value
                          + struct.pack("<I", masked_crc32c(value, self._crc)))


class WriteGzipTFRecords(beam.PTransform):
    """Serialized records -> PREFIX-SSSSS-of-NNNNN<suffix> GZIP TFRecord shards."""

    def __init__(self, file_path_prefix: str, file_name_suffix: str, num_shards: int = 0, level: int = 1):
        super().__init__()
        self._sink = GzipTFRecordSink(file_path_prefix, file_name_suffix, num_shards, level)

    def expand(self, pcoll):
        return pcoll | beam.io.Write(self._sink)
