"""Exact frame sampling: every frame must be the one sequential PyAV decoding gives.

Every clip here paints its own frame index into its pixels (``fixtures/make_raw.py``), so a
frame that is one off is caught even where two frames look alike, and the pixels are also
compared with a full sequential decode, bit for bit. Besides the fixture clips, the tests
encode clips with PyAV in the shapes UCF-101 comes in and the shapes that break naive
readers: B-frames on and off, DivX packed bitstreams with N-VOP placeholders, long GOPs,
long clips, Matroska (no frame count) and a raw elementary stream (no timestamps).
"""

from __future__ import annotations

import importlib.util
import io
import json
import random
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from phi3v_data import video
from phi3v_data.video import VideoError, count_frames, frame_indices, read_frames, sample_video
from tests.conftest import FIXTURES

RAW = FIXTURES / "raw"
_spec = importlib.util.spec_from_file_location("make_raw", FIXTURES / "make_raw.py")
assert _spec and _spec.loader
make_raw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_raw)

MANIFEST = json.loads((RAW / "manifest.json").read_text())
GOOD_CLIPS = sorted(path for path, v in MANIFEST["videos"].items() if v["status"] == "ok")
TRUNCATED = "ucf101_official/UCF-101/Archery/v_Archery_g08_c01.avi"
ZERO_BYTES = "UCF101_subset/train/ApplyLipstick/v_ApplyLipstick_g10_c01.avi"
NOT_A_VIDEO = "UCF101_subset/train/Archery/v_Archery_g10_c02.avi"


# --------------------------------------------------------------------------------------------
# Helpers: paint, encode, pack, decode
# --------------------------------------------------------------------------------------------


def painted(index: int, size: tuple[int, int]) -> np.ndarray:
    """Frame ``index`` (< 16384): low 8 bits as the fixture's index, high 6 bits as its tag."""
    rgb = make_raw.frame_pixels(index % 256, index // 256)
    width, height = size
    if (width, height) != (rgb.shape[1], rgb.shape[0]):
        rows = np.arange(height) * rgb.shape[0] // height
        cols = np.arange(width) * rgb.shape[1] // width
        rgb = rgb[rows][:, cols]
    return rgb


def painted_index(rgb: np.ndarray) -> int:
    return make_raw.frame_index_from_pixels(rgb) + 256 * make_raw.clip_tag_from_pixels(rgb)


def encode(
    frames: int, gop: int = 12, b_frames: int = 2, size: tuple[int, int] = (96, 48)
) -> list[bytes]:
    """MPEG-4 Part 2 packets in decoding order, the VOL header in the first one."""
    codec = av.CodecContext.create("mpeg4", "w")
    codec.width, codec.height, codec.pix_fmt = size[0], size[1], "yuv420p"
    codec.time_base, codec.framerate = Fraction(1, 25), Fraction(25)
    codec.gop_size, codec.max_b_frames, codec.thread_count = gop, b_frames, 1
    codec.options = {"qmin": "2", "qmax": "8", "flags": "+bitexact", "sc_threshold": "1000000000"}
    packets: list[bytes] = []
    for index in range(frames):
        frame = av.VideoFrame.from_ndarray(painted(index, size), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = index
        packets += [bytes(packet) for packet in codec.encode(frame)]
    packets += [bytes(packet) for packet in codec.encode(None)]
    return packets


def vop_type(packet: bytes) -> str:
    at = packet.find(b"\x00\x00\x01\xb6")
    return "IPBS"[packet[at + 4] >> 6]


# An N-VOP ("not coded"): P type, modulo_time_base 0, marker, 5-bit time increment (25 fps),
# marker, vop_coded 0, then stuffing to the byte boundary.
NVOP = b"\x00\x00\x01\xb6" + int("0101000001001111", 2).to_bytes(2, "big")


def pack_divx(packets: list[bytes]) -> list[bytes]:
    """The DivX/XviD "packed bitstream" layout of UCF-101: each reference picture shares its
    chunk with the first B-picture after it, the other B-pictures follow one per chunk, then
    an N-VOP placeholder keeps one chunk per frame. The user data says "packed" ('p')."""
    out: list[bytes] = []
    i = 0
    while i < len(packets):
        j = i + 1
        while j < len(packets) and vop_type(packets[j]) == "B":
            j += 1
        b_pictures = packets[i + 1 : j]
        if b_pictures:
            out += [packets[i] + b_pictures[0], *b_pictures[1:], NVOP]
        else:
            out.append(packets[i])
        i = j
    first_vop = out[0].find(b"\x00\x00\x01\xb6")
    out[0] = out[0][:first_vop] + b"\x00\x00\x01\xb2DivX503b1393p\x00" + out[0][first_vop:]
    return out


def write(
    packets: list[bytes], path: Path, size: tuple[int, int] = (96, 48), extradata: bytes = b""
) -> Path:
    """Mux packets, one per chunk, into AVI (XVID tag), Matroska or a raw .m4v stream."""
    fmt = {".avi": "avi", ".mkv": "matroska", ".m4v": "m4v"}[path.suffix]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        if fmt == "avi":
            stream.codec_context.codec_tag = "XVID"
        if extradata:
            stream.codec_context.extradata = extradata
        for number, data in enumerate(packets):
            packet = av.Packet(data)
            packet.pts = packet.dts = number
            packet.time_base = Fraction(1, 25)
            packet.is_keyframe = vop_type(data) == "I"
            packet.stream = stream
            container.mux(packet)
    return path


def decode_all(path: Path) -> list[tuple[np.ndarray, float | None]]:
    """The reference: sequential decoding from the start, as the Cookbook's loop does."""
    with av.open(str(path)) as container:
        return [
            (frame.to_ndarray(format="rgb24"), frame.time)
            for frame in container.decode(container.streams.video[0])
        ]


def shown_index(path: Path, rgb: np.ndarray) -> int:
    """The index painted in a frame; fixture clips carry their tag where ours carry the
    high bits of the index."""
    rel = path.relative_to(RAW).as_posix() if path.is_relative_to(RAW) else None
    if rel in MANIFEST["videos"]:
        assert make_raw.clip_tag_from_pixels(rgb) == MANIFEST["videos"][rel]["tag"]
        return make_raw.frame_index_from_pixels(rgb)
    return painted_index(rgb)


def assert_exact(path: Path, indices: list[int], reference=None) -> list[video.Frame]:
    reference = reference if reference is not None else decode_all(path)
    frames = read_frames(path, indices)
    assert [frame.index for frame in frames] == indices
    for frame in frames:
        rgb = np.asarray(frame.image)
        assert frame.image.mode == "RGB"
        assert shown_index(path, rgb) == frame.index, f"{path.name}: frame {frame.index}"
        assert np.array_equal(rgb, reference[frame.index][0]), f"{path.name}: {frame.index}"
        assert frame.time == reference[frame.index][1]
    return frames


def tricky_indices(total: int, seed: int = 0) -> list[int]:
    """Both samplings at several sizes, the ends, and a random spread."""
    picks = {0, total - 1}
    for count in (1, 3, 8, 16):
        for sampling in ("uniform", "centers"):
            picks.update(frame_indices(total, count, sampling))
    picks.update(random.Random(seed).sample(range(total), min(total, 24)))
    return sorted(picks)


# --------------------------------------------------------------------------------------------
# frame_indices
# --------------------------------------------------------------------------------------------


def test_uniform_is_the_cookbook_formula_without_float_error():
    for total in range(1, 400):
        for count in (1, 2, 3, 7, 8, 16):
            picks = frame_indices(total, count, "uniform")
            assert picks == [int(Fraction(i * total, count)) for i in range(count)]
            assert len(picks) == count and picks == sorted(picks)
            assert all(0 <= k < total for k in picks)
            if total >= count:
                assert len(set(picks)) == count


def test_float_arange_can_give_one_index_too_many_but_we_never_do():
    # The Cookbook's np.arange(0, total, total / 8) yields 9 indices for some totals.
    too_many = [n for n in range(1, 3000) if len(np.arange(0, n, n / 7).astype(int)) != 7]
    assert too_many, "no float rounding case found; the test would prove nothing"
    for total in too_many:
        assert len(frame_indices(total, 7)) == 7


def test_centers_are_segment_midpoints():
    assert frame_indices(80, 8, "centers") == [5, 15, 25, 35, 45, 55, 65, 75]
    assert frame_indices(10, 4, "centers") == [1, 3, 6, 8]
    for total in range(1, 300):
        picks = frame_indices(total, 8, "centers")
        assert len(picks) == 8 and all(0 <= k < total for k in picks)
        assert picks == sorted(picks)


def test_short_clips_repeat_frames_so_there_are_always_num_frames():
    assert frame_indices(3, 8, "uniform") == [0, 0, 0, 1, 1, 1, 2, 2]
    assert frame_indices(3, 8, "centers") == [0, 0, 0, 1, 1, 2, 2, 2]
    assert frame_indices(1, 8) == [0] * 8


def test_frame_indices_rejects_bad_arguments():
    with pytest.raises(VideoError, match="no frames"):
        frame_indices(0, 8)
    with pytest.raises(ValueError, match="num_frames"):
        frame_indices(10, 0)
    with pytest.raises(ValueError, match="sampling"):
        frame_indices(10, 8, "random")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The fixture clips (real B-frame AVIs with XVID tags)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", GOOD_CLIPS)
def test_fixture_clips_are_counted_and_read_exactly(rel):
    path = RAW / rel
    reference = decode_all(path)
    expected = MANIFEST["videos"][rel]["frames"]
    assert count_frames(path) == len(reference) == expected
    for count in (8, 5, 16):
        for sampling in ("uniform", "centers"):
            sample = sample_video(path, count, sampling)
            assert sample.total_frames == expected and sample.fps == 25.0
            assert sample.method == "stretches"
            assert sample.indices == frame_indices(expected, count, sampling)
            assert_exact(path, sample.indices, reference)
    assert_exact(path, [expected - 1, 0, expected - 1], reference)


def test_every_frame_of_a_fixture_clip_individually():
    rel = max(GOOD_CLIPS, key=lambda r: MANIFEST["videos"][r]["frames"])
    path = RAW / rel
    reference = decode_all(path)
    for index in range(len(reference)):
        assert_exact(path, [index], reference)


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        (TRUNCATED, "truncated"),
        (ZERO_BYTES, "empty file"),
        (NOT_A_VIDEO, "not a readable video"),
        ("UCF101_subset/train/Archery/missing.avi", "no such file"),
    ],
)
def test_broken_files_raise_a_one_line_video_error(rel, reason):
    path = RAW / rel
    for call in (count_frames, lambda p: sample_video(p), lambda p: read_frames(p, [0])):
        with pytest.raises(VideoError) as caught:
            call(path)
        message = str(caught.value)
        assert reason in message and str(path) in message and "\n" not in message
        assert isinstance(caught.value, ValueError)


def test_decord_backend_is_refused_with_the_reason():
    with pytest.raises(VideoError, match="decord"):
        sample_video(RAW / GOOD_CLIPS[0], backend="decord")


def test_out_of_range_and_repeated_indices():
    path = RAW / GOOD_CLIPS[0]
    total = count_frames(path)
    with pytest.raises(IndexError, match="out of range"):
        read_frames(path, [total])
    with pytest.raises(IndexError):
        read_frames(path, [-1])
    frames = assert_exact(path, [5, 2, 5, 0])
    assert [f.index for f in frames] == [5, 2, 5, 0]
    assert read_frames(path, []) == []


# --------------------------------------------------------------------------------------------
# Naive seeking is wrong on these files (so the tests above measure something)
# --------------------------------------------------------------------------------------------


def naive_seek(path: Path, index: int) -> int:
    """What most loaders do: seek to the frame's timestamp, decode to the first frame at or
    after it, trust it. Returns the index painted in the frame it gets."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        target = int(index / 25 / stream.time_base)
        container.seek(target, stream=stream)
        for frame in container.decode(stream):
            if frame.pts is not None and frame.pts >= target:
                return shown_index(path, frame.to_ndarray(format="rgb24"))
    return -1


def test_naive_seeking_returns_other_frames_on_the_fixtures_and_we_do_not(tmp_path):
    path = RAW / GOOD_CLIPS[0]
    total = count_frames(path)
    wrong = [k for k in range(total) if naive_seek(path, k) != k]
    assert wrong, "naive seeking happened to be exact: this test would prove nothing"
    assert_exact(path, wrong)
    packed = write(pack_divx(encode(60)), tmp_path / "packed.avi")
    assert any(naive_seek(packed, k) != k for k in range(60))


def test_packed_chunks_fed_from_mid_stream_lose_b_pictures(tmp_path):
    """Why the fast path splits chunks: a decoder that starts after the first chunk never
    sees the DivX 'packed' user data and drops the B-picture riding in each P chunk."""
    path = write(pack_divx(encode(48)), tmp_path / "packed.avi")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        chunks = [p for p in container.demux(stream) if p.size]
        key = next(i for i, p in enumerate(chunks) if i and p.is_keyframe)
        seen = []
        for chunk in chunks[key:]:
            seen += [painted_index(f.to_ndarray(format="rgb24")) for f in stream.decode(chunk)]
    first = seen[0]
    assert seen != list(range(first, first + len(seen)))
    assert_exact(path, list(range(first, 48)))


# --------------------------------------------------------------------------------------------
# Encoded clips: lengths, GOPs, B-frames, packing, containers
# --------------------------------------------------------------------------------------------

CASES = {
    # name: (frames, gop, b_frames, packed, suffix, size)
    "packed-gop12-b2": (300, 12, 2, True, ".avi", (96, 48)),
    "plain-gop50-b2": (700, 50, 2, False, ".avi", (96, 48)),
    "packed-gop300-b2-long": (1500, 300, 2, True, ".avi", (96, 48)),
    "packed-gop12-b1": (250, 12, 1, True, ".avi", (96, 48)),
    "packed-gop18-b3": (350, 18, 3, True, ".avi", (96, 48)),
    "no-b-frames": (400, 12, 0, False, ".avi", (96, 48)),
    "all-intra": (120, 1, 0, False, ".avi", (96, 48)),
    "matroska-no-frame-count": (300, 12, 2, False, ".mkv", (96, 48)),
    "raw-m4v-no-timestamps": (200, 12, 2, False, ".m4v", (96, 48)),
    "ucf-size-320x240": (130, 12, 2, True, ".avi", (320, 240)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoded_clips_are_counted_and_read_exactly(name, tmp_path):
    frames, gop, b_frames, packed, suffix, size = CASES[name]
    packets = encode(frames, gop, b_frames, size)
    if packed:
        packets = pack_divx(packets)
    path = write(packets, tmp_path / f"{name}{suffix}", size)
    reference = decode_all(path)
    assert len(reference) == frames
    assert count_frames(path) == frames
    assert_exact(path, tricky_indices(frames), reference)
    sample = sample_video(path)
    assert sample.method == "stretches" and sample.total_frames == frames
    assert_exact(path, sample.indices, reference)
    if suffix == ".mkv":
        with av.open(str(path)) as container:
            assert container.streams.video[0].frames == 0  # metadata can't be trusted


def test_headers_only_in_extradata(tmp_path):
    """Video-for-Windows AVIs can keep the VOL header (and the encoder's user data) in the
    stream header only; the first chunk then starts with its picture."""
    packets = pack_divx(encode(100))
    first_vop = packets[0].find(b"\x00\x00\x01\xb6")
    headers, packets[0] = packets[0][:first_vop], packets[0][first_vop:]
    path = write(packets, tmp_path / "extradata.avi", extradata=headers)
    reference = decode_all(path)
    assert len(reference) == 100
    sample = sample_video(path)
    assert sample.method == "stretches" and sample.total_frames == 100
    assert_exact(path, tricky_indices(100), reference)


def test_b_pictures_before_each_keyframe_need_the_previous_gop(tmp_path):
    """Open GOPs: the B-pictures shown just before an I-picture are decoded after it and
    reference the picture before it; starting at that I-picture would lose them."""
    path = write(pack_divx(encode(120, gop=12, b_frames=2)), tmp_path / "open.avi")
    keys = [i for i in range(12, 120, 12)]
    assert_exact(path, [k - 1 for k in keys] + [k - 2 for k in keys] + keys)


def test_a_long_clip_is_read_from_a_few_short_stretches(tmp_path):
    """The point of the module: 8 frames of 1,500 take a small part of the decoding."""
    path = write(pack_divx(encode(1500, gop=12)), tmp_path / "long.avi")
    with video._Clip.open(path) as clip:
        assert clip.units is not None
        wanted = sorted({clip.display_units[k] for k in frame_indices(clip.total, 8)})
        fed = sum(len(feed) for feed in video._plan(clip.units, wanted))
    assert fed < 0.08 * len(clip.units)
    assert_exact(path, frame_indices(1500, 8))


def test_no_vop_placeholders_in_a_low_delay_stream(tmp_path):
    """XviD writes N-VOPs for dropped frames. FFmpeg decodes no picture for them, except
    that a low-delay stream ending in one repeats its last picture at the flush."""
    packets = encode(90, gop=30, b_frames=0)
    for at in (70, 40, 10):
        packets.insert(at, NVOP)
    packets.append(NVOP)
    path = write(packets, tmp_path / "nvop.avi")
    reference = decode_all(path)
    assert len(reference) == 91  # 90 pictures and the repeat
    assert painted_index(reference[90][0]) == 89
    assert count_frames(path) == 91
    frames = read_frames(path, list(range(91)))
    for frame, (rgb, time) in zip(frames, reference, strict=True):
        assert np.array_equal(np.asarray(frame.image), rgb) and frame.time == time


def test_a_decoder_that_disagrees_with_the_model_falls_back_to_sequential(tmp_path, monkeypatch):
    path = write(pack_divx(encode(100)), tmp_path / "clip.avi")
    reference = decode_all(path)
    original: Callable = video._Reorder.decode

    def wrong(self, unit_id, unit):
        out = original(self, unit_id, unit)
        return [u + 1 for u in out]  # predicts the neighbouring picture

    monkeypatch.setattr(video._Reorder, "decode", wrong)
    sample = sample_video(path)
    assert sample.method == "sequential"
    assert_exact(path, sample.indices, reference)


def test_other_codecs_are_decoded_sequentially_and_exactly(tmp_path):
    path = tmp_path / "mpeg2.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("mpeg2video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 48, "yuv420p"
        stream.codec_context.max_b_frames = 2
        stream.codec_context.gop_size = 12
        stream.codec_context.options = {"qmin": "2", "qmax": "8"}
        for index in range(80):
            frame = av.VideoFrame.from_ndarray(painted(index, (96, 48)), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    reference = decode_all(path)
    assert count_frames(path) == len(reference) == 80
    sample = sample_video(path, 8, "centers")
    assert sample.method == "sequential"
    assert_exact(path, sample.indices, reference)


def test_jpeg_saved_frames_keep_their_index(tmp_path):
    path = write(pack_divx(encode(200, size=(320, 240))), tmp_path / "ucf.avi", (320, 240))
    for frame in sample_video(path).frames:
        buffer = io.BytesIO()
        frame.image.save(buffer, "JPEG")
        buffer.seek(0)
        with Image.open(buffer) as jpeg:
            assert painted_index(np.asarray(jpeg.convert("RGB"))) == frame.index
