"""Ex-message codec and stream splitter, checked against the test vectors of docs/protocol.md §3.7."""
import pytest

from gagent.protocol import exmessage as ex


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize("frame, expected", [
    (ex.encode_register_worker(0x1122, "cgminer", "s1099"), "7f 01 1400 2211 63676d696e657200 733130393900"),
    (ex.encode_register_worker(0x0102, "cgminer/4.10.0", "s19-01"),
     "7f011c00020163676d696e65722f342e31302e30007331392d303100"),
    (ex.encode_register_worker(0, "", ""), "7f01080000000000"),
    (ex.encode_unregister_worker(0x1122), "7f04 0600 2211"),
    (ex.encode_submit_share(0xA9, 0x1122, 0x11223344, 0xAABBCCDD), "7f 02 0f00 a9 2211 44332211 ddccbbaa"),
    (ex.encode_submit_share(0xA9, 0x1122, 0x11223344, 0xAABBCCDD, ntime=0x57BD2AD0),
     "7f 03 1300 a9 2211 44332211 ddccbbaa d02abd57"),
    (ex.encode_submit_share(5, 0x0102, 0xDEADBEEF, 0x1D2C3B4A, version_mask=0x00A4E000),
     "7f121300050201efbeadde4a3b2c1d00e0a400"),
    (ex.encode_submit_share(5, 0x0102, 0xDEADBEEF, 0x1D2C3B4A, ntime=0x6553F1A4, version_mask=0x00A4E000),
     "7f131700050201efbeadde4a3b2c1da4f1536500e0a400"),
    (ex.encode_submit_share(3, 0x002A, 0x0000BEEF, 0x1C9F0A77, version_mask=0x00A4C000),
     "7f121300032a00efbe0000770a9f1c00c0a400"),
    (ex.encode_mining_set_diff(13, [0x1122, 0x3344]), "7f 05 0b00 0d 0200 2211 4433"),
    (ex.encode_submit_response(5, 1798084231), "7f 10 0a00 0500 87962c6b"),
    (ex.encode_submit_response(0xFFFF, 22), "7f100a00ffff16000000"),
])
def test_encoders_match_protocol_vectors(frame, expected):
    assert frame == h(expected)


def test_register_is_cut_to_the_pools_100_byte_limit_agent_first():
    frame = ex.encode_register_worker(7, "a" * 80, "w" * 30)
    assert len(frame) == ex.MAX_REGISTER_SIZE
    sid, agent, worker = ex.decode_register_worker(frame[4:])
    assert (sid, worker) == (7, "w" * 30) and agent == "a" * 62
    frame = ex.encode_register_worker(7, "agent", "w" * 200)
    sid, agent, worker = ex.decode_register_worker(frame[4:])
    assert len(frame) == 100 and agent == "" and worker == "w" * 92


def test_register_drops_nul_bytes_that_would_split_the_names():
    _, agent, worker = ex.decode_register_worker(ex.encode_register_worker(1, "a\0b", "w\0x")[4:])
    assert (agent, worker) == ("ab", "wx")


def test_decoders_match_protocol_vectors():
    assert ex.decode_mining_set_diff(h("0e020002010100")) == (14, [0x0102, 0x0001])
    assert ex.decode_submit_response(h("030087962c6b")) == (3, 1798084231)
    assert ex.decode_submit_response(h("040017000000")) == (4, 23)
    share = ex.decode_submit_share(0x13, h("7f131700050201efbeadde4a3b2c1da4f1536500e0a400")[4:])
    assert share == ex.SubmitShare(5, 0x0102, 0xDEADBEEF, 0x1D2C3B4A, 0x6553F1A4, 0x00A4E000)


@pytest.mark.parametrize("body", [b"", b"\x0d", b"\x0d\x02\x00\x22\x11"])
def test_set_diff_with_wrong_count_is_a_protocol_error(body):
    with pytest.raises(ex.ProtocolError):
        ex.decode_mining_set_diff(body)


def test_submit_response_of_wrong_size_is_a_protocol_error():
    with pytest.raises(ex.ProtocolError):
        ex.decode_submit_response(b"\x00" * 5)


def test_set_diff_splits_at_32764_ids():
    data = ex.encode_mining_set_diff(10, list(range(40000)))
    frames = ex.StreamSplitter().feed(data)
    assert [len(ex.decode_mining_set_diff(f.body)[1]) for f in frames] == [32764, 40000 - 32764]


def test_splitter_handles_mixed_stream_split_at_every_byte():
    stream = (b'{"id":"sub","result":true}\n' + h("7f050b000d020022114433")
              + h("7f100a00050087962c6b") + b'{"id":null,"method":"mining.notify","params":[]}\n'
              + h("7f050700020000"))
    expected = ex.StreamSplitter().feed(stream)
    assert expected == [b'{"id":"sub","result":true}', ex.Frame(5, h("0d020022114433")),
                        ex.Frame(0x10, h("050087962c6b")),
                        b'{"id":null,"method":"mining.notify","params":[]}', ex.Frame(5, h("020000"))]
    for cut in range(1, len(stream)):
        splitter = ex.StreamSplitter()
        assert splitter.feed(stream[:cut]) + splitter.feed(stream[cut:]) == expected
    byte_by_byte = ex.StreamSplitter()
    assert [item for i in range(len(stream)) for item in byte_by_byte.feed(stream[i:i + 1])] == expected
    assert byte_by_byte.pending == 0


def test_splitter_rejects_frame_shorter_than_its_header():
    with pytest.raises(ex.ProtocolError):
        ex.StreamSplitter().feed(h("7f050200"))


def test_splitter_bounds_lines_without_newline():
    splitter = ex.StreamSplitter(max_line=1000)
    splitter.feed(b"{" + b"x" * 900)
    with pytest.raises(ex.ProtocolError):
        splitter.feed(b"x" * 200)


def test_splitter_accepts_a_one_megabyte_line():
    line = b'{"id":null,"method":"mining.notify","params":["' + b"a" * (1 << 20) + b'"]}'
    splitter = ex.StreamSplitter(max_line=4 << 20)
    items = []
    for start in range(0, len(line) + 1, 65536):
        items += splitter.feed((line + b"\n")[start:start + 65536])
    assert items == [line]
