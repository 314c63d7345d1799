"""The small shared helpers of common/: free ports, the compressed-stream check, typed YAML checks and deep merge."""

from __future__ import annotations

import bz2
import gzip
import socket
import zlib
from dataclasses import dataclass, field

import pytest

from common import compression, typed_yaml
from common.ports import free_port, free_ports


# ------------------------------------------------------------------------------------------------ ports
def test_free_ports_are_distinct_and_bindable_on_loopback():
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(1024 <= p <= 65535 for p in ports)
    socks = []
    try:
        for p in ports + [free_port()]:
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", p))  # nothing holds them any more
    finally:
        for s in socks:
            s.close()
    with pytest.raises(ValueError, match="n must be >= 1"):
        free_ports(0)


# ------------------------------------------------------------------------------------------------ compression
def _check(tmp_path, name: str, blob: bytes, chunk_bytes: int = 1 << 20) -> str | None:
    path = tmp_path / name
    path.write_bytes(blob)
    return compression.stream_error(lambda: open(path, "rb"), compression.kind_of(name), chunk_bytes)


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_whole_and_multi_member_streams_pass(tmp_path, chunk):
    text = b"".join(b"row %d,1,2\n" % i for i in range(5000))
    assert _check(tmp_path, "a.gz", gzip.compress(text[:700]) + gzip.compress(text[700:]), chunk) is None
    assert _check(tmp_path, "b.bz2", bz2.compress(text[:700]) + bz2.compress(text[700:]), chunk) is None


def test_cut_and_junk_streams_are_named(tmp_path):
    text = b"x" * 200_000 + bytes(range(256)) * 400
    for name, blob in (("c.gz", gzip.compress(text)), ("d.bz2", bz2.compress(text))):
        msg = _check(tmp_path, name, blob[:-9])
        assert msg.startswith("truncated: the ") and "without its end-of-stream marker" in msg, msg
    z = zlib.compressobj(1, zlib.DEFLATED, 31)  # flushed at a record boundary, never finished: no end marker
    assert "truncated" in _check(tmp_path, "e.gz", z.compress(text) + z.flush(zlib.Z_SYNC_FLUSH))
    assert _check(tmp_path, "f.gz", b"not gzip at all").startswith("corrupt gzip stream near byte 15")
    missing = compression.stream_error(lambda: open(tmp_path / "absent.gz", "rb"))
    assert missing.startswith("corrupt gzip stream near byte 0 (FileNotFoundError")


def test_a_highly_compressible_stream_is_checked_in_bounded_steps(tmp_path):
    blob = gzip.compress(b"\0" * (3 * compression.MAX_OUT + 17), 9)  # decompresses to more than one step
    assert _check(tmp_path, "zeros.gz", blob) is None
    assert "truncated" in _check(tmp_path, "zeros_cut.gz", blob[:-9])


def test_kind_by_suffix_and_unknown_kind():
    assert [compression.kind_of(p) for p in ("a.csv.gz", "b.bz2", "c.csv", "d.gz.tmp")] == ["gzip", "bzip2", None,
                                                                                           None]
    with pytest.raises(ValueError, match="'zip' is not one of gzip, bzip2"):
        compression.stream_error(lambda: open(__file__, "rb"), "zip")


# ------------------------------------------------------------------------------------------------ typed YAML
def test_deep_merge_merges_mappings_and_replaces_the_rest_without_touching_inputs():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    over = {"a": {"y": [3], "z": {"k": 1}}, "b": {"now": "a mapping"}}
    assert typed_yaml.deep_merge(base, over) == {"a": {"x": 1, "y": [3], "z": {"k": 1}}, "b": {"now": "a mapping"}}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}


def test_type_rule():
    assert typed_yaml.typed(3, float) == 3.0 and isinstance(typed_yaml.typed(3, float), float)
    assert typed_yaml.typed(None, int) is None
    assert typed_yaml.typed("a", (str, int)) == "a"
    for value, typ, message in ((True, int, "expected int, got a boolean"), (1, bool, "expected true/false, got int 1"),
                                ("abc", int, "expected int, got str 'abc'"), (1.5, (str, int), "expected str/int")):
        with pytest.raises(typed_yaml.Problem, match=message):
            typed_yaml.typed(value, typ)


def test_mapping_and_choice_name_the_culprit():
    with pytest.raises(typed_yaml.Problem) as e:
        typed_yaml.mapping({"a": 1, "colour": 2}, {"a", "b"})
    assert e.value.path == ("colour",) and e.value.message == "unknown key 'colour' (allowed: a, b)"
    with pytest.raises(typed_yaml.Problem) as e:
        typed_yaml.mapping({"a": 1}, {"a", "b"}, ["b"])
    assert e.value.path == ("b",) and e.value.message == "is required"
    with pytest.raises(typed_yaml.Problem, match="expected a mapping, got list"):
        typed_yaml.mapping([1], {"a"})
    with pytest.raises(typed_yaml.Problem, match="'wide' is not one of rocket, light"):
        typed_yaml.choice("wide", {"rocket": 1, "light": 2})


@dataclass(frozen=True)
class _Inner:
    widths: tuple[int, ...] = (1,)
    rate: float | None = None


@dataclass(frozen=True)
class _Outer:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner)


def test_build_makes_the_dataclass_tree_and_reports_the_key_path():
    built = typed_yaml.build(_Outer, {"inner": {"widths": [4, 2], "rate": 1}})
    assert built == _Outer("x", _Inner((4, 2), 1.0)) and isinstance(built.inner.rate, float)
    for raw, dotted, message in (({"inner": {"widths": [4, "8"]}}, "inner.widths[1]", "expected int, got str '8'"),
                                 ({"inner": {"rates": 1}}, "inner.rates", "unknown key 'rates'"),
                                 ({"name": None}, "name", "expected str, got null"),
                                 ({"inner": {"widths": 3}}, "inner.widths", "expected a list, got int 3")):
        with pytest.raises(typed_yaml.Problem) as e:
            typed_yaml.build(_Outer, raw)
        assert e.value.dotted == dotted and e.value.message.startswith(message), (raw, e.value.path, e.value.message)
