"""Format 0.3.0 byte for byte. The expected values below were derived from the
format description by hand and with other tools (openssl md5/sha256 over the
literal strings), not by calling the code under test: they are the contract
that lets Tyger read muster's buffers and the other way round."""

from __future__ import annotations

import base64
import io
import json

import pytest

from muster.common.buffers import format as fmt
from muster.common.buffers.client import ContainerClient
from muster.common.buffers.reader import read_buffer
from muster.common.buffers.writer import write_buffer
from tests.buffers.conftest import in_an_hour

# "hello world" cut into blocks of 4 bytes: "hell", "o wo", "rld", then the empty blob.
HELLO_BLOCKS = [
    # (blob name, content, base64 MD5, cumulative chain)
    ("00/000", b"hell", "QinWkbB7EzQdpT8Xq58kFg==", "6qP0UGDO7lxjF36T3cnaS9962s4SrO6ct2PlKCttU6s="),
    ("00/001", b"o wo", "58UqZVwjJwVSub+eoBsUgw==", "g1Cai7KKOJBn1ZxlUlVpRMfFtPWA3WMtLLjs1/L6gaQ="),
    ("00/002", b"rld", "6QyOHts5txPQZ1g3pE1A1w==", "1nByDLK3B+7XAXmA04sqaJBMVew1gTFzQZPnL+XqrVo="),
    ("00/003", b"", "1B2M2Y8AsgTpgAmY7PhCfg==", "PvEpxLDklcOhXS+RqtHSXDgbK3leA2h9luZkdRQ5fQM="),
]
START = (b'{"version":"0.3.0"}', "jRl6v+tdX5RbfseHVtVXDw==")
END_COMPLETE = (b'{"status":"complete"}', "dDGK6tOTr1krU6jOyYJ/Rw==")
END_FAILED = (b'{"status":"failed"}', "l4FjUUeaw1N1wQ5zVGyUWQ==")


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (0, "00/000"),
        (1, "00/001"),
        (0xABC, "00/ABC"),
        (0x400, "00/400"),
        (0xFFF, "00/FFF"),
        (0x1000, "01/000"),
        (0x1FFF, "01/FFF"),
        (0x2000, "02/00/000"),
        (0x2010, "02/00/010"),
        (0x3FFF, "02/01/FFF"),
        (0x5321, "03/01/321"),
        (0x10102345, "11/01/02/345"),
    ],
)
def test_blob_names(number: int, name: str) -> None:
    assert fmt.blob_path(number) == name


def test_blob_names_sort_in_block_order() -> None:
    names = [fmt.blob_path(n) for n in range(0, 200_000, 7)]
    assert names == sorted(names)
    assert len(set(names)) == len(names)


def test_markers_are_go_json() -> None:
    assert fmt.start_marker() == START[0]
    assert fmt.end_marker("complete") == END_COMPLETE[0]
    assert fmt.end_marker("failed") == END_FAILED[0]
    assert fmt.md5_b64(START[0]) == START[1]
    assert fmt.parse_end_marker(b'{ "status" : "failed" }') == "failed"
    with pytest.raises(ValueError):
        fmt.end_marker("done")


def test_hash_chain_known_answers() -> None:
    assert base64.b64decode(fmt.INITIAL_HASH_CHAIN) == b"0" * 16
    chain = fmt.INITIAL_HASH_CHAIN
    for _, content, md5, expected in HELLO_BLOCKS:
        assert fmt.md5_b64(content) == md5
        chain = fmt.next_hash_chain(chain, md5)
        assert chain == expected


def test_buffer_ids() -> None:
    ids = {fmt.new_buffer_id() for _ in range(200)}
    assert len(ids) == 200
    for bid in ids:
        assert len(bid) == 26 and bid == bid.lower()
        assert len(base64.b32decode(bid.upper() + "======")) == 16
        assert fmt.is_buffer_id(bid)
    assert not fmt.is_buffer_id("yf4sx2aqzitepjhmxjhanomn5")
    assert not fmt.is_buffer_id("YF4SX2AQZITEPJHMXJHANOMN5E")
    assert fmt.is_buffer_id("yf4sx2aqzitepjhmxjhanomn5e")


@pytest.mark.parametrize(
    ("text", "size"),
    [("4Mi", 4 << 20), ("1M", 1 << 20), ("512KiB", 512 << 10), ("65536", 65536), ("2G", 2 << 30)],
)
def test_block_sizes(text: str, size: int) -> None:
    assert fmt.parse_block_size(text) == size


def test_go_durations() -> None:
    assert fmt.parse_go_duration("1s") == 1.0
    assert fmt.parse_go_duration("500ms") == 0.5
    assert fmt.parse_go_duration("1m30s") == 90.0
    assert fmt.parse_go_duration("0") == 0.0
    with pytest.raises(ValueError):
        fmt.parse_go_duration("1 second")


async def test_written_layout_matches_the_spec(plane, buffer_id, writer_client, tmp_path) -> None:
    """What muster writes, on disk, is exactly the hand-built expectation."""
    result = await write_buffer(writer_client, b"hello world", block_size=4)
    assert (result.bytes, result.blocks) == (11, 3)
    data = tmp_path / "dataplane" / "data" / buffer_id
    meta = tmp_path / "dataplane" / "metadata" / buffer_id
    assert (data / ".bufferstart").read_bytes() == START[0]
    assert (data / ".bufferend").read_bytes() == END_COMPLETE[0]
    assert json.loads((meta / ".bufferstart").read_text()) == {"contentMD5": START[1]}
    for name, content, md5, chain in HELLO_BLOCKS:
        assert (data / name).read_bytes() == content
        doc = json.loads((meta / name).read_text())
        assert doc == {"contentMD5": md5, "customMetadata": {"cumulative_hash_chain": chain}}
    files = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    assert files == sorted([".bufferstart", ".bufferend"] + [n for n, *_ in HELLO_BLOCKS])


async def test_reads_a_hand_built_buffer(plane, buffer_id, tmp_path) -> None:
    """A buffer laid out by hand from the spec (as Tyger's data plane stores one) reads back."""
    data = tmp_path / "dataplane" / "data" / buffer_id
    meta = tmp_path / "dataplane" / "metadata" / buffer_id

    def put(name: str, content: bytes, md5: str, chain: str | None = None) -> None:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (meta / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(content)
        doc: dict = {"contentMD5": md5}
        if chain:
            doc["customMetadata"] = {"cumulative_hash_chain": chain}
        (meta / name).write_text(json.dumps(doc))

    put(".bufferstart", *START)
    for name, content, md5, chain in HELLO_BLOCKS:
        put(name, content, md5, chain)
    put(".bufferend", *END_COMPLETE)
    url = plane.access_url(buffer_id, writable=False, expires_at=in_an_hour())
    out = io.BytesIO()
    async with ContainerClient(url) as client:
        assert await read_buffer(client, out, end_poll_interval=0.05) == 11
    assert out.getvalue() == b"hello world"
