"""Exact, fast video frame sampling.

The contract: every frame returned for index ``k`` is pixel-for-pixel the ``k``-th frame that
decoding the file sequentially from the start with PyAV yields (``container.decode()``), and
``count_frames`` is the number of frames that sequential decoding yields. Container metadata
(``stream.frames``, durations) is never trusted: it is 0 in Matroska, stale in truncated AVIs,
and wrong whenever a packet holds two pictures or none.

Why not just seek? UCF-101 is MPEG-4 Part 2 (XviD) in AVI with B-frames, often in the DivX
"packed bitstream" layout where one AVI chunk holds a P- and a B-picture and a later chunk is an
empty N-VOP placeholder. AVI has no presentation timestamps: FFmpeg guesses them, so a seek to
a timestamp lands one or two frames off, and after a seek FFmpeg's decoder no longer knows the
stream is packed and silently drops the packed B-pictures. Decoding every frame from the start
is exact but reads the whole clip for eight frames.

How this module stays exact and still skips work (MPEG-4 Part 2 streams, any container):

1. **Index pass, no decoding.** Every packet is demuxed and the MPEG-4 start codes in it are
   read: the VOL header (time-increment width, low-delay flag), DivX/XviD user data (the
   "packed" flag), and each VOP header's picture type and ``vop_coded`` bit. Each picture
   (VOP) becomes a *unit* of its own, so packed chunks are split the way FFmpeg's
   ``mpeg4_unpack_bframes`` filter splits them.
2. **A model of FFmpeg's decoder.** A few lines replay what ``h263dec.c``/``mpeg4videodec.c``
   do with those pictures in sequential decoding: which chunk each picture is decoded at
   (packed B-pictures one chunk late), which pictures are skipped (N-VOPs), the one-picture
   reorder delay of reference pictures, the picture the end-of-stream flush releases. That
   gives the display index of every unit and the exact frame count. Streams the model does
   not cover (more than two pictures in a chunk, a low-delay flag FFmpeg would flip mid-stream,
   a damaged header, a zero-size chunk mid-stream, a non-MPEG-4 codec, ...) are decoded
   sequentially instead: slow but exact by definition.
3. **Stretch decoding, checked picture by picture.** For each wanted frame the decoder is
   flushed and fed units from the last I-picture that makes the wanted picture decodable,
   all reference pictures and only the wanted B-pictures (B-pictures are never referenced),
   then drained. Unit 0 is decoded first when no stretch starts there, so the decoder has
   seen the first packet's headers (the encoder's user data selects FFmpeg's bug
   workarounds). Every unit fed gets a synthetic pts equal to its unit number, FFmpeg copies
   it onto the picture it decodes, and the same model, run in lockstep on exactly the units
   fed, predicts which unit every returned frame must be. Any frame that is not the
   predicted one (an extra, a missing or a reordered picture) aborts the fast path and the
   clip is decoded sequentially. The tests compare the pixels with a full sequential decode
   on B-frame AVIs, packed and unpacked, with and without N-VOPs, at several GOP sizes and
   lengths, in AVI, Matroska and a raw elementary stream.

A damaged, truncated or unreadable file raises :class:`VideoError` with a one-line reason: a
truncated AVI's last chunk is incomplete and sequential decoding stops on it with an error,
so there is no frame count that sequential decoding would agree with; the converter skips
such a clip and reports it.
"""

from __future__ import annotations

import operator
import os
import re
import threading
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal, NamedTuple

import av
import av.error
import numpy as np
from av.container import InputContainer
from av.video.reformatter import VideoReformatter
from av.video.stream import VideoStream
from PIL import Image

Sampling = Literal["uniform", "centers"]
Backend = Literal["pyav", "decord"]
Method = Literal["stretches", "sequential"]

__all__ = [
    "Frame",
    "VideoError",
    "VideoSample",
    "count_frames",
    "frame_indices",
    "read_frames",
    "sample_video",
]


class VideoError(ValueError):
    """A video that cannot be sampled exactly: missing, empty, not a video, truncated, damaged.

    The message is one line that names the file and the reason, ready for a skip report.
    """


@dataclass(frozen=True)
class Frame:
    """One sampled frame.

    ``index`` is the frame's position in sequential decoding order (0-based); ``time`` is the
    timestamp sequential decoding reports for it (pts x time_base, in seconds), ``None`` when
    the container gives none. AVI stores no timestamps and FFmpeg guesses them from the
    picture types: on B-frame AVIs frame ``k`` typically reports ``(k + 1) / fps``.
    """

    index: int
    time: float | None
    image: Image.Image


@dataclass(frozen=True)
class VideoSample:
    """The frames sampled from one clip, with the facts needed to reproduce the sampling."""

    path: str
    total_frames: int
    fps: float | None
    sampling: Sampling
    frames: list[Frame]
    method: Method  # "stretches": keyframe stretches, model-checked; "sequential": from the start

    @property
    def indices(self) -> list[int]:
        return [frame.index for frame in self.frames]


# --------------------------------------------------------------------------------------------
# Index selection
# --------------------------------------------------------------------------------------------


def frame_indices(total: int, num_frames: int, sampling: Sampling = "uniform") -> list[int]:
    """Pick ``num_frames`` frame indices out of ``total`` frames, in ascending order.

    - ``"uniform"``: the Phi-3 Cookbook's ``int(i * total / num_frames)``, computed as
      ``i * total // num_frames`` so float rounding can never add a ninth index or shift one.
    - ``"centers"``: the centre frame of each of ``num_frames`` equal segments,
      ``(2i + 1) * total // (2 * num_frames)``.

    Always exactly ``num_frames`` indices: a trainer that expects 8 images per sample gets 8.
    When ``total < num_frames`` the same formulas repeat frames, each of the ``num_frames``
    equal time slots taking the frame that covers it (3 frames, 8 wanted, uniform:
    ``[0, 0, 0, 1, 1, 1, 2, 2]``). Raises :class:`VideoError` when ``total`` is 0.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if total < 1:
        raise VideoError("the video has no frames")
    if sampling == "uniform":
        return [i * total // num_frames for i in range(num_frames)]
    if sampling == "centers":
        return [(2 * i + 1) * total // (2 * num_frames) for i in range(num_frames)]
    raise ValueError(f"sampling must be 'uniform' or 'centers', got {sampling!r}")


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def count_frames(path: str | os.PathLike[str]) -> int:
    """The number of frames sequential decoding yields, without decoding where it can.

    MPEG-4 Part 2 streams are counted from their packets' picture headers (see the module
    docstring); other codecs, and MPEG-4 streams the model does not cover, are decoded.
    """
    with _Clip.open(path) as clip:
        return clip.total


def read_frames(path: str | os.PathLike[str], indices: Sequence[int]) -> list[Frame]:
    """The frames at ``indices`` (any order, repeats allowed), exactly as sequential decoding
    yields them; one :class:`Frame` per requested index, in the order requested.

    Raises :class:`IndexError` for an index outside ``[0, count_frames(path))`` and
    :class:`VideoError` for a file that cannot be read.
    """
    wanted = [operator.index(index) for index in indices]
    with _Clip.open(path) as clip:
        return clip.read(wanted)


def sample_video(
    path: str | os.PathLike[str],
    num_frames: int = 8,
    sampling: Sampling = "uniform",
    backend: Backend = "pyav",
) -> VideoSample:
    """Count a clip's frames and read ``num_frames`` of them picked by :func:`frame_indices`.

    ``backend="pyav"`` is the exact path described in the module docstring. ``"decord"`` is
    refused with :class:`VideoError`: decord's batch access returns neighbouring or far-off
    frames on B-frame AVIs such as UCF-101, so it cannot meet this function's contract.
    """
    if backend == "decord":
        raise VideoError(_decord_refusal())
    if backend != "pyav":
        raise ValueError(f"backend must be 'pyav' or 'decord', got {backend!r}")
    with _Clip.open(path) as clip:
        total = clip.total
        try:
            frames = clip.read(frame_indices(total, num_frames, sampling))
        except IndexError:
            if clip.total == total:
                raise
        if clip.total != total:
            # The decoder contradicted the frame-count model and the clip was recounted by
            # decoding; pick the indices again from the true count.
            total = clip.total
            frames = clip.read(frame_indices(total, num_frames, sampling))
        return VideoSample(
            path=os.fspath(path),
            total_frames=total,
            fps=clip.fps,
            sampling=sampling,
            frames=frames,
            method=clip.method,
        )


def _decord_refusal() -> str:
    try:
        import decord  # noqa: F401  (optional dependency, only probed)
    except ImportError:
        return (
            "backend 'decord' is not installed (pip install 'phi3v[decord]'), and it is not "
            "exact on B-frame AVIs anyway; use backend='pyav'"
        )
    return (
        "backend 'decord' is not exact: on B-frame AVIs such as UCF-101 its batch access "
        "returns neighbouring or far-off frames; use backend='pyav'"
    )


# --------------------------------------------------------------------------------------------
# MPEG-4 Part 2 bitstream: just enough of ISO/IEC 14496-2 to know what FFmpeg will do
# --------------------------------------------------------------------------------------------

_START = b"\x00\x00\x01"
_VOP_START = b"\x00\x00\x01\xb6"
_USER_DATA = 0xB2
_VOL_FIRST, _VOL_LAST = 0x20, 0x2F
# Pictures FFmpeg's packed-bitstream code keeps for the next chunk must exceed this size
# (``buf_size - current_pos > 7`` in ff_mpeg4_frame_end); smaller ones are N-VOP stubs.
_PACKED_MIN = 8
_SIMPLE_VO_TYPES = (1, 17)  # Simple and Advanced Simple object types: FFmpeg's low_delay guess
_DIVX_USER_DATA = re.compile(rb"DivX(\d+)(?:Build|b)(\d+)(.?)", re.DOTALL)


class _Unmodelled(Exception):
    """The stream does something the decoder model does not cover; decode sequentially."""


class _Mismatch(Exception):
    """The decoder returned a different picture than the model predicted."""


class _Bits:
    """Big-endian bit reader over a few header bytes."""

    __slots__ = ("left", "value")

    def __init__(self, data: bytes, start: int, size: int) -> None:
        chunk = data[start : start + size]
        self.value = int.from_bytes(chunk, "big")
        self.left = 8 * len(chunk)

    def read(self, n: int) -> int:
        if n > self.left:
            raise _Unmodelled("header runs past the end of its packet")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)


@dataclass(frozen=True)
class _Vol:
    """The VOL fields that decide how FFmpeg parses VOP headers and orders pictures."""

    time_increment_bits: int
    vo_type: int
    control: bool  # vol_control_parameters present
    low_delay: bool  # the VOL's own flag (meaningful only when ``control``)


def _parse_vol(data: bytes, start: int) -> _Vol:
    bits = _Bits(data, start + 4, 32)
    bits.read(1)  # random_accessible_vol
    vo_type = bits.read(8)
    if bits.read(1):  # is_object_layer_identifier: verid and priority
        bits.read(7)
    if bits.read(4) == 15:  # aspect_ratio_info: extended PAR
        bits.read(16)
    control = bool(bits.read(1))
    low_delay = False
    if control:
        bits.read(2)  # chroma_format
        low_delay = bool(bits.read(1))
        if bits.read(1):  # vbv_parameters
            bits.read(79)
    shape = bits.read(2)
    if shape != 0:
        raise _Unmodelled("non-rectangular video object layer")
    if not bits.read(1):
        raise _Unmodelled("VOL marker bit missing")
    resolution = bits.read(16)
    if resolution == 0 or not bits.read(1):
        raise _Unmodelled("invalid vop_time_increment_resolution")
    return _Vol(max(1, (resolution - 1).bit_length()), vo_type, control, low_delay)


class _Vop(NamedTuple):
    start: int  # offset of the start code in its packet
    kind: str  # "I", "P", "B" or "S"
    coded: bool


def _vop_kind(data: bytes, start: int, tib: int) -> tuple[str, bool]:
    """vop_coding_type and vop_coded of the VOP at ``start``: the header is the coding type,
    modulo_time_base (ones, then a zero), a marker, vop_time_increment, a marker, vop_coded."""
    chunk = data[start + 4 : start + 12 + (tib >> 3)]
    top = 8 * len(chunk) - 1  # bit number of the first header bit
    value = int.from_bytes(chunk, "big")
    pos = top - 2  # after vop_coding_type
    while pos >= 0 and value >> pos & 1:  # modulo_time_base
        pos -= 1
    pos -= 1  # the marker before vop_time_increment
    if pos - tib - 2 < 0:
        raise _Unmodelled("VOP header runs past the end of its packet")
    if not value >> pos & 1:
        raise _Unmodelled("VOP marker bit missing")
    pos -= tib + 1
    # FFmpeg re-guesses the time-increment width when this marker is 0; don't follow it there.
    if not value >> pos & 1:
        raise _Unmodelled("VOP time increment does not match the VOL")
    return "IPBS"[value >> (top - 1)], bool(value >> (pos - 1) & 1)


def _parse_vop(data: bytes, start: int, tib: int) -> _Vop:
    return _Vop(start, *_vop_kind(data, start, tib))


def _more_vops(data: bytes, first: _Vop, at: int, state: _StreamState) -> list[_Vop]:
    """``first`` and the VOPs from ``at`` on (a packed chunk holds two)."""
    assert state.vol is not None
    vops = [first]
    while at >= 0:
        vops.append(_parse_vop(data, at, state.vol.time_increment_bits))
        at = data.find(_VOP_START, at + 4)
    return vops


@dataclass
class _StreamState:
    """What FFmpeg's decoder has learnt from the headers so far."""

    vol: _Vol | None = None
    vol_bytes: bytes = b""
    user_data: set[bytes] = field(default_factory=set)
    packed: bool = False
    divx: bool = False
    pictures: int = 0  # packets with pictures seen so far


def _scan_packet(data: bytes, state: _StreamState) -> tuple[list[_Vop], bool]:
    """The VOPs in one packet, and whether header start codes precede the first one.

    Like FFmpeg, only the headers before the first VOP are read; after a VOP only another VOP
    start code matters (a packed B-picture).
    """
    first = data.find(_VOP_START)
    if first < 0:
        raise _Unmodelled("packet without a picture")
    headers = first > 0
    if headers:
        _scan_headers(data, first, state)
    if state.vol is None:
        raise _Unmodelled("picture before any VOL header")
    tib = state.vol.time_increment_bits
    state.pictures += 1
    vops = [_parse_vop(data, first, tib)]
    pos = data.find(_VOP_START, first + 4)
    while pos >= 0:
        vops.append(_parse_vop(data, pos, tib))
        pos = data.find(_VOP_START, pos + 4)
    return vops, headers


def _scan_headers(data: bytes, stop: int, state: _StreamState) -> None:
    """Read the VOL and user-data headers in ``data[:stop]``."""
    pos = data.find(_START, 0, stop)
    while pos >= 0 and pos + 3 < stop:
        code = data[pos + 3]
        if _VOL_FIRST <= code <= _VOL_LAST:
            end = data.find(_START, pos + 4, stop + 3)
            raw = data[pos : end if end >= 0 else stop]
            if raw != state.vol_bytes:  # encoders repeat the VOL at every I-picture
                vol = _parse_vol(data, pos)
                if state.pictures and vol != state.vol:
                    raise _Unmodelled("VOL header changes mid-stream")
                state.vol, state.vol_bytes = vol, raw
        elif code == _USER_DATA:
            end = data.find(_START, pos + 4, stop + 3)
            raw = data[pos : end if end >= 0 else stop]
            if raw not in state.user_data:
                # The encoder's user data selects FFmpeg's bug workarounds (XviD, DivX and
                # lavc build numbers), so a decoder that starts mid-stream must have seen the
                # same; new user data after the first picture is not followed.
                if state.pictures:
                    raise _Unmodelled("user data changes mid-stream")
                state.user_data.add(raw)
                _read_user_data(data, pos + 4, state)
        pos = data.find(_START, pos + 4, stop + 3)


def _read_user_data(data: bytes, start: int, state: _StreamState) -> None:
    """DivX user data ``DivX503b1393p``: the trailing ``p`` marks a packed bitstream."""
    end = data.find(_START, start)
    text = data[start : (end if end >= 0 else len(data))][:255]
    match = _DIVX_USER_DATA.match(text)
    if match:
        state.divx = True
        state.packed = match.group(3) == b"p"


# --------------------------------------------------------------------------------------------
# The decoder model: FFmpeg's picture order for MPEG-4 Part 2 (h263dec.c ff_h263_decode_frame)
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Unit:
    """One picture as the fast path feeds it to the decoder."""

    data: bytes
    kind: str
    coded: bool
    packet: int  # the chunk during which sequential decoding decodes it (packed B: one later)


class _Reorder:
    """FFmpeg's output rule: B-pictures (and everything when low_delay) leave at once; a
    reference picture leaves when the next one arrives or at the end-of-stream flush."""

    __slots__ = ("has_last", "low_delay", "pending", "skipped_last")

    def __init__(self, low_delay: bool) -> None:
        self.low_delay = low_delay
        self.pending: int | None = None  # next_pic
        self.has_last = False  # last_pic exists
        self.skipped_last = False

    def decode(self, unit_id: int, unit: _Unit) -> list[int]:
        if not unit.coded:  # N-VOP: FRAME_SKIPPED, no picture
            self.skipped_last = True
            return []
        self.skipped_last = False
        if unit.kind == "B":
            # "skip B-frames if we don't have reference frames"
            return [unit_id] if self.has_last else []
        previous = self.pending
        self.has_last = previous is not None
        self.pending = unit_id
        if self.low_delay:
            return [unit_id]
        return [previous] if previous is not None else []

    def flush(self) -> list[int]:
        if (not self.low_delay or self.skipped_last) and self.pending is not None:
            out = [self.pending]
            self.pending = None
            return out
        return []


def _model_units(packets: Sequence[bytes], extradata: bytes = b"") -> tuple[list[_Unit], bool]:
    """Split packets into one-picture units in the order sequential decoding decodes them.

    ``extradata`` is read first, as FFmpeg's decoder does when it opens: AVI files written
    through Video for Windows may keep the VOL header only there. Returns the units and the
    decoder's low_delay flag. Raises :class:`_Unmodelled` for any layout whose sequential
    decoding the model cannot vouch for.
    """
    state = _StreamState()
    if extradata:
        try:
            _scan_headers(extradata, len(extradata), state)
        except _Unmodelled:
            state = _StreamState()  # FFmpeg only warns about unparsable extradata
    units: list[_Unit] = []
    append = units.append
    stored: _Unit | None = None  # a packed B-picture waiting for the next chunk
    has_b = False
    for number, data in enumerate(packets):
        if not data:
            raise _Unmodelled("empty packet inside the stream")
        if data.startswith(_VOP_START) and state.vol is not None:
            # The common case, first: one picture and no headers.
            state.pictures += 1
            kind, coded = _vop_kind(data, 0, state.vol.time_increment_bits)
            second = data.find(_VOP_START, 4)
            if second < 0:
                if stored is None:
                    append(_Unit(data, kind, coded, number))
                    if kind == "B":
                        has_b = True
                    continue
                vops = [_Vop(0, kind, coded)]
            else:
                vops = _more_vops(data, _Vop(0, kind, coded), second, state)
            headers = False
        else:
            vops, headers = _scan_packet(data, state)
        kind = vops[0].kind
        if kind == "B" or vops[-1].kind == "B":
            has_b = True
        if stored is not None:
            # FFmpeg decodes the kept B-picture now and keeps this chunk only if it is a
            # coded B-picture; an N-VOP placeholder is dropped unread.
            if headers or len(vops) != 1:
                raise _Unmodelled("unexpected chunk after a packed B-picture")
            stored.packet = number
            append(stored)
            stored = None
            if kind == "B" and vops[0].coded and len(data) >= _PACKED_MIN:
                stored = _Unit(data, "B", True, number)
            elif vops[0].coded:
                raise _Unmodelled("coded picture where an N-VOP placeholder belongs")
            continue
        if len(vops) == 1:
            append(_Unit(data, kind, vops[0].coded, number))
            continue
        if len(vops) > 2:
            raise _Unmodelled("more than two pictures in one packet")
        first, second = vops
        if not (state.packed and first.coded and second.kind == "B" and second.coded):
            raise _Unmodelled("two pictures in one packet outside a DivX packed bitstream")
        if len(data) - second.start < _PACKED_MIN:
            raise _Unmodelled("packed B-picture too small to tell from an N-VOP")
        append(_Unit(data[: second.start], kind, True, number))
        stored = _Unit(data[second.start :], "B", True, number)
    # A packed B-picture still waiting at the end is never decoded: the flush call only
    # releases the last reference picture. Dropping it here matches sequential decoding.
    vol = state.vol
    if vol is None:
        raise _Unmodelled("no VOL header")
    if vol.control:
        low_delay = vol.low_delay
    elif has_b:
        # FFmpeg guesses low_delay and clears it at the first B-picture, mid-stream.
        raise _Unmodelled("B-pictures without vol_control_parameters")
    else:
        low_delay = vol.vo_type in _SIMPLE_VO_TYPES or (vol.vo_type == 0 and not state.divx)
    if low_delay and has_b:
        raise _Unmodelled("low_delay stream with B-pictures")
    if units and units[0].kind != "I":
        raise _Unmodelled("stream does not start with an I-picture")
    return units, low_delay


def _display_order(units: Sequence[_Unit], low_delay: bool) -> list[int]:
    """Unit ids in the order sequential decoding returns their pictures (repeats possible:
    a low-delay stream ending in an N-VOP returns its last picture twice)."""
    reorder = _Reorder(low_delay)
    order: list[int] = []
    for unit_id, unit in enumerate(units):
        order.extend(reorder.decode(unit_id, unit))
    order.extend(reorder.flush())
    return order


# --------------------------------------------------------------------------------------------
# A clip: the index pass, the fast reader and the sequential reader
# --------------------------------------------------------------------------------------------


def _fail(path: str | os.PathLike[str], reason: str) -> VideoError:
    return VideoError(f"{os.fspath(path)}: {reason}")


def _describe(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


class _Clip:
    """One video stream, demuxed once; frames are decoded from the packets kept in memory."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        container: InputContainer,
        stream: VideoStream,
        packets: list[av.Packet],
    ) -> None:
        self.path = path
        self.container = container
        self.stream = stream
        self.packets = packets
        self.time_base: Fraction | None = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
        self.fps: float | None = float(rate) if rate else None
        self.units: list[_Unit] | None = None
        self.low_delay = False
        self.display_units: list[int] = []
        self.method: Method = "sequential"
        self._total: int | None = None
        if stream.codec_context.name == "mpeg4":
            datas = [bytes(packet) for packet in packets]
            try:
                self.units, self.low_delay = _model_units(datas, stream.codec_context.extradata)
            except (_Unmodelled, IndexError, ValueError):
                # Anything the model does not understand is decoded sequentially.
                self.units = None
            else:
                self.display_units = _display_order(self.units, self.low_delay)
                self._total = len(self.display_units)
                self.method = "stretches"

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> _Clip:
        """Demux every packet of the first video stream (no decoding).

        The container stays open until :meth:`close`: the stream's decoder belongs to it.
        """
        file = Path(path)
        if not file.is_file():
            raise _fail(path, "no such file")
        if file.stat().st_size == 0:
            raise _fail(path, "empty file (0 bytes)")
        try:
            container = av.open(str(file))
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise _fail(path, f"not a readable video ({_describe(error)})") from None
        try:
            if not container.streams.video:
                raise _fail(path, "no video stream")
            stream = container.streams.video[0]
            packets: list[av.Packet] = []
            for number, packet in enumerate(container.demux(stream)):
                if packet.is_corrupt:
                    raise _fail(path, f"truncated or damaged: packet {number} is incomplete")
                packets.append(packet)
            if packets and packets[-1].size == 0 and packets[-1].dts is None:
                packets.pop()  # PyAV's end-of-stream marker; decode(None) stands for it
            if not packets:
                raise _fail(path, "the video stream has no packets")
            return cls(path, container, stream, packets)
        except av.error.FFmpegError as error:
            container.close()
            raise _fail(path, f"cannot demux ({_describe(error)})") from None
        except BaseException:
            container.close()
            raise

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> _Clip:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- counting ----------------------------------------------------------------------------

    @property
    def total(self) -> int:
        if self._total is None:
            self._total = sum(1 for _ in self._sequential())
        if self._total == 0:
            raise _fail(self.path, "the video has no decodable frames")
        return self._total

    def _distrust_model(self) -> None:
        """The decoder disagreed with the model: from now on everything is sequential."""
        self.units = None
        self.display_units = []
        self.method = "sequential"
        self._total = None

    # --- reading -----------------------------------------------------------------------------

    def read(self, indices: list[int]) -> list[Frame]:
        """Frames at ``indices`` in sequential-decoding numbering (see :func:`read_frames`)."""
        if not indices:
            return []
        self._check_range(indices)
        wanted = sorted(set(indices))
        found: dict[int, Frame] | None = None
        if self.units is not None:
            try:
                found = self._read_fast(wanted)
            except _Mismatch:
                self._distrust_model()
                self._check_range(indices)  # against the count sequential decoding gives
        if found is None:
            found = self._read_sequential(wanted)
        return [found[index] for index in indices]

    def _check_range(self, indices: list[int]) -> None:
        total = self.total
        for index in indices:
            if not 0 <= index < total:
                raise IndexError(f"frame {index} out of range: the video has {total} frames")

    def _frame(self, index: int, frame: av.VideoFrame, pts: int | None) -> Frame:
        time = float(pts * self.time_base) if pts is not None and self.time_base else None
        rgb = _to_rgb24(frame)
        return Frame(index=index, time=time, image=Image.fromarray(rgb, mode="RGB"))

    def _context(self) -> av.CodecContext:
        """The stream's own decoder (it carries the container's colour and codec-tag facts),
        single-threaded so that each picture fed returns its frame at once."""
        context = self.stream.codec_context
        if not context.is_open:
            context.thread_count = 1
            context.thread_type = "SLICE"
        return context

    def _sequential(self) -> Iterator[av.VideoFrame]:
        """Every frame, decoding each packet in order: the definition of exact."""
        context = self._context()
        try:
            for packet in self.packets:
                yield from context.decode(packet)
            yield from context.decode(None)
        except av.error.FFmpegError as error:
            raise _fail(self.path, f"damaged video data ({_describe(error)})") from None
        finally:
            context.flush_buffers()

    def _read_sequential(self, wanted: list[int]) -> dict[int, Frame]:
        targets = set(wanted)
        found: dict[int, Frame] = {}
        frames = self._sequential()
        try:
            for index, frame in enumerate(frames):
                if index in targets:
                    found[index] = self._frame(index, frame, frame.pts)
                    if len(found) == len(targets):
                        break
        finally:
            frames.close()
        if len(found) != len(targets):  # pragma: no cover - total came from the same decode
            raise _fail(self.path, "fewer frames than counted")
        return found

    # --- the fast path -------------------------------------------------------------------------

    def _read_fast(self, wanted: list[int]) -> dict[int, Frame]:
        units = self.units
        assert units is not None
        order = self.display_units
        displays_of: dict[int, list[int]] = {}
        for index in wanted:
            displays_of.setdefault(order[index], []).append(index)
        context = self._context()
        found: dict[int, Frame] = {}
        plan = _plan(units, sorted(displays_of))
        if plan[0][0] != 0:
            # Unit 0 carries the first packet's headers (VOL, encoder user data): decode it
            # once so the decoder knows what sequential decoding knows before any picture.
            plan.insert(0, [0])
        try:
            for feed in plan:
                context.flush_buffers()
                reorder = _Reorder(self.low_delay)
                for unit_id in feed:
                    packet = _padded_packet(units[unit_id].data)
                    packet.pts = unit_id
                    expected = reorder.decode(unit_id, units[unit_id])
                    self._collect(context.decode(packet), expected, displays_of, found)
                self._collect(context.decode(None), reorder.flush(), displays_of, found)
        except av.error.FFmpegError as error:
            raise _fail(self.path, f"damaged video data ({_describe(error)})") from None
        finally:
            context.flush_buffers()
        if len(found) != len(wanted):
            raise _Mismatch("not every wanted picture came out")
        return found

    def _collect(
        self,
        frames: list[av.VideoFrame],
        expected: list[int],
        displays_of: dict[int, list[int]],
        found: dict[int, Frame],
    ) -> None:
        """Keep the wanted pictures, after checking that each returned picture is the unit
        the model predicts (its pts is the unit number it was fed with)."""
        if [frame.pts for frame in frames] != expected:
            raise _Mismatch(f"decoder returned units {[f.pts for f in frames]}, not {expected}")
        units = self.units
        assert units is not None
        last = len(self.display_units) - 1
        for frame, unit_id in zip(frames, expected, strict=True):
            for index in displays_of.get(unit_id, ()):
                if index in found:
                    continue
                # Sequential decoding reports the pts of the packet the picture was decoded
                # in; a low-delay flush repeat carries the last packet's.
                repeat = index == last and index > 0 and self.display_units[index - 1] == unit_id
                packet = self.packets[-1] if repeat else self.packets[units[unit_id].packet]
                found[index] = self._frame(index, frame, packet.pts)


_local = threading.local()


def _to_rgb24(frame: av.VideoFrame) -> np.ndarray:
    """``frame.to_ndarray(format="rgb24")``, the same swscale conversion (the tests compare
    the pixels), through one reformatter per thread: PyAV builds a new swscale context for
    every frame it converts, 2-5 ms each at 320x240, more than decoding the frame."""
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        reformatter = _local.reformatter = VideoReformatter()
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


def _padded_packet(data: bytes) -> av.Packet:
    """A packet owning a copy of ``data`` plus FFmpeg's zeroed input padding.

    ``av.Packet(bytes)`` wraps the bytes without the AV_INPUT_BUFFER_PADDING_SIZE bytes that
    decoders may read past the end; the MPEG-4 decoder does, and then decodes whatever
    memory follows, so a P-picture can come out as a copy of its reference.
    """
    packet = av.Packet(len(data))
    memoryview(packet)[:] = data
    return packet


def _plan(units: Sequence[_Unit], targets: Sequence[int]) -> list[list[int]]:
    """Stretches to decode, as the unit ids to feed, each stretch ending with a drain.

    Each target needs the decoder to start at an I-picture: the last one at or before it for
    an I- or P-picture; for a B-picture the last one at or before its *earlier* reference,
    since a B-picture that follows an I-picture in decoding order but shows before it also
    needs the reference before that I-picture. A target's picture comes out when the next
    reference picture goes in (a B-picture at once; everything at once in low-delay streams),
    or when the decoder is drained, which is how every stretch ends: draining releases the
    last reference picture without decoding the next one. Targets whose start lies inside the
    stretch before them
    join it (decoding on costs no more than restarting); one whose start lies before that
    stretch's start pulls it back. Within a stretch every reference picture and N-VOP is fed
    (they carry the decoder's reference and timing state) but only the B-pictures wanted.
    """
    count = len(units)
    keys = [i for i, unit in enumerate(units) if unit.kind == "I" and unit.coded]
    is_ref = [unit.kind != "B" and unit.coded for unit in units]
    previous_ref: list[int | None] = []  # the last coded reference before each unit
    latest: int | None = None
    for i in range(count):
        previous_ref.append(latest)
        if is_ref[i]:
            latest = i
    stretches: list[list[int]] = []  # [start, end]
    wanted = sorted(set(targets))
    for target in wanted:
        anchor = target
        if units[target].kind == "B":
            later = previous_ref[target]
            earlier = previous_ref[later] if later is not None else None
            anchor = earlier if earlier is not None else 0
        start = keys[max(bisect_right(keys, anchor) - 1, 0)]
        end = target + 1
        if stretches and start <= stretches[-1][1]:
            stretches[-1][1] = max(stretches[-1][1], end)
            stretches[-1][0] = min(stretches[-1][0], start)
            while len(stretches) > 1 and stretches[-1][0] <= stretches[-2][1]:
                last = stretches.pop()
                stretches[-1] = [min(last[0], stretches[-1][0]), max(last[1], stretches[-1][1])]
        else:
            stretches.append([start, end])
    wanted_set = set(wanted)
    return [
        [i for i in range(start, end) if not units[i].coded or is_ref[i] or i in wanted_set]
        for start, end in stretches
    ]
