"""Video conversion throughput: exact frame sampling against the Cookbook's loop, in one run.

Generates UCF-101-like clips (320x240, 25 fps, MPEG-4 Part 2 with B-frames in AVI, XVID tag,
DivX packed bitstream with N-VOP placeholders as UCF-101 stores them), about 7 s and 60 s
long, then converts each clip to 8 JPEG frames two ways:

- baseline, what the Phi-3 Cookbook's ``convert_ucf101.py`` does: PyAV, indices from the
  stream's frame count (``np.arange(0, total, total / 8)``), decoding every frame from the
  start up to the last needed one, ``to_ndarray(format="rgb24")``, Pillow JPEG save;
- ours: ``phi3v_data.video.sample_video`` (exact frames, decoding only keyframe stretches)
  and the same Pillow JPEG save.

Each method runs in its own process pinned to one core, and videos/s counts that process's
whole life, interpreter start-up and imports included. The in-process time per clip is
printed too. Before timing, the script checks that both methods pick the same indices and
the same pixels on every clip. JPEGs go to a temporary folder.

    python benchmarks/convert_throughput.py [--clips7 24] [--clips60 6] [--gop 12]

Targets (issue 3), with exact frames: at least 2x the baseline on 7 s clips and at least 8x
on 60 s clips, on one core including start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT, FPS, FRAMES_PER_SAMPLE = 320, 240, 25, 8
NVOP = b"\x00\x00\x01\xb6" + int("0101000001001111", 2).to_bytes(2, "big")


# --------------------------------------------------------------------------------------------
# Clip generation
# --------------------------------------------------------------------------------------------


def vop_type(packet: bytes) -> str:
    at = packet.find(b"\x00\x00\x01\xb6")
    return "IPBS"[packet[at + 4] >> 6]


def pack_divx(packets: list[bytes]) -> list[bytes]:
    """DivX packed bitstream: a reference picture and the next B-picture share a chunk, an
    N-VOP placeholder keeps one chunk per frame, the user data ends in 'p'."""
    out: list[bytes] = []
    i = 0
    while i < len(packets):
        j = i + 1
        while j < len(packets) and vop_type(packets[j]) == "B":
            j += 1
        b_pictures = packets[i + 1 : j]
        out += [packets[i] + b_pictures[0], *b_pictures[1:], NVOP] if b_pictures else [packets[i]]
        i = j
    first_vop = out[0].find(b"\x00\x00\x01\xb6")
    out[0] = out[0][:first_vop] + b"\x00\x00\x01\xb2DivX503b1393p\x00" + out[0][first_vop:]
    return out


class Scene:
    """A panning textured background, two moving blocks and sensor-like noise: content that
    costs the encoder and decoder about what camera footage at UCF-101's bitrate does."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0 : HEIGHT * 2, 0 : WIDTH * 3].astype(np.float32)
        phase = rng.uniform(0, 6.28, 3)
        self.texture = np.stack(
            [128 + 60 * np.sin(x / 23 + p) * np.cos(y / 31 + 2 * p) for p in phase], axis=2
        )
        self.colours = rng.integers(40, 220, (2, 3))
        self.noise = rng.normal(0, 4, (7, HEIGHT, WIDTH, 3)).astype(np.float32)

    def frame(self, index: int) -> np.ndarray:
        t = index / FPS
        dx = int(40 * t) % (WIDTH * 2)
        dy = int(HEIGHT / 2 + HEIGHT / 2 * np.sin(t / 3))
        image = self.texture[dy : dy + HEIGHT, dx : dx + WIDTH] + self.noise[index % 7]
        for k, (speed, size) in enumerate(((55, 40), (-35, 60))):
            cx = int((WIDTH / 2 + speed * t * (k + 1)) % WIDTH)
            cy = int(HEIGHT / 2 + 50 * np.sin(t * (k + 1)))
            top, left = max(cy - size // 2, 0), max(cx - size // 2, 0)
            image[top : cy + size // 2, left : cx + size // 2] = self.colours[k]
        return np.clip(image, 0, 255).astype(np.uint8)


def make_clip(path: Path, frames: int, gop: int, seed: int) -> None:
    codec = av.CodecContext.create("mpeg4", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base, codec.framerate = Fraction(1, FPS), Fraction(FPS)
    codec.gop_size, codec.max_b_frames, codec.bit_rate = gop, 2, 500_000
    codec.options = {"sc_threshold": "1000000000"}
    packets: list[bytes] = []
    scene = Scene(seed)
    for index in range(frames):
        frame = av.VideoFrame.from_ndarray(scene.frame(index), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = index
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.codec_tag = "XVID"
        for number, data in enumerate(pack_divx(packets)):
            packet = av.Packet(data)
            packet.pts = packet.dts = number
            packet.time_base = Fraction(1, FPS)
            packet.is_keyframe = vop_type(data) == "I"
            packet.stream = stream
            container.mux(packet)


# --------------------------------------------------------------------------------------------
# The two converters
# --------------------------------------------------------------------------------------------


def cookbook_frames(path: Path) -> tuple[list[int], list[np.ndarray]]:
    """The Cookbook's sampling loop: metadata frame count, sequential decode, to_ndarray."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames
        indices = np.arange(0, total, total / FRAMES_PER_SAMPLE).astype(int).tolist()
        wanted, last = set(indices), indices[-1]
        frames: list[np.ndarray] = []
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
            if index >= last:
                break
    return indices, frames


def convert_baseline(path: Path, out: Path) -> None:
    _, frames = cookbook_frames(path)
    for k, rgb in enumerate(frames):
        Image.fromarray(rgb).convert("RGB").save(out / f"{path.stem}.{k}.jpg")


def convert_ours(path: Path, out: Path) -> None:
    from phi3v_data.video import sample_video

    for k, frame in enumerate(sample_video(path, FRAMES_PER_SAMPLE).frames):
        frame.image.save(out / f"{path.stem}.{k}.jpg")


def child(method: str, out: Path, clips: list[Path]) -> None:
    """Runs in the pinned subprocess: convert every clip, print the in-process seconds."""
    if method == "ours":
        import phi3v_data.video  # noqa: F401  (start-up cost belongs to the process)
    convert = convert_ours if method == "ours" else convert_baseline
    started = time.perf_counter()
    for clip in clips:
        convert(clip, out)
    print(json.dumps({"seconds": time.perf_counter() - started}))


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def check_same_frames(clips: list[Path]) -> None:
    from phi3v_data.video import sample_video

    for clip in clips:
        indices, expected = cookbook_frames(clip)
        sample = sample_video(clip, FRAMES_PER_SAMPLE)
        assert sample.indices == indices, (clip, sample.indices, indices)
        for frame, rgb in zip(sample.frames, expected, strict=True):
            assert np.array_equal(np.asarray(frame.image), rgb), (clip, frame.index)


def run(method: str, clips: list[Path], out: Path, cpu: int) -> tuple[float, float]:
    """(wall seconds of the whole process, in-process seconds)."""
    listing = out / f"{method}.txt"
    listing.write_text("\n".join(map(str, clips)))
    command = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--out",
        str(out),
        "--list",
        str(listing),
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    started = time.perf_counter()
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, check=True, preexec_fn=lambda: pin(cpu)
    )
    wall = time.perf_counter() - started
    return wall, json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips7", type=int, default=24, help="distinct ~7 s clips")
    parser.add_argument("--clips60", type=int, default=6, help="distinct 60 s clips")
    parser.add_argument("--repeat7", type=int, default=10, help="passes over the 7 s clips")
    parser.add_argument("--repeat60", type=int, default=8, help="passes over the 60 s clips")
    parser.add_argument("--gop", type=int, default=12, help="keyframe interval (XviD max: 300)")
    parser.add_argument("--workdir", type=Path, help="keep the clips here (default: temp)")
    parser.add_argument("--cpu", type=int, help="core to pin to (default: the first allowed)")
    parser.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--list", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        listed = args.list.read_text().split("\n")
        child(args.child, args.out, [Path(p) for p in listed if p])
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="phi3v-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cpu = args.cpu
    if cpu is None:
        cpu = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    print(f"pinned to cpu {cpu}; PyAV {av.__version__}; GOP {args.gop}, 2 B-frames, packed")
    startup = {}
    for method in ("baseline", "ours"):
        empty = workdir / f"jpeg-{method}"
        empty.mkdir(exist_ok=True)
        startup[method] = min(run(method, [], empty, cpu)[0] for _ in range(3))
        shutil.rmtree(empty)
    print(
        f"process start-up and imports: baseline {startup['baseline'] * 1000:.0f} ms, "
        f"ours {startup['ours'] * 1000:.0f} ms (phi3v_data imports its whole package)"
    )
    try:
        for seconds, count, repeat in (
            (7, args.clips7, args.repeat7),
            (60, args.clips60, args.repeat60),
        ):
            clips = []
            started = time.perf_counter()
            for n in range(count):
                clip = workdir / f"v_Clip_g{n % 25 + 1:02d}_c{n:02d}_{seconds}s_gop{args.gop}.avi"
                if not clip.exists():
                    make_clip(clip, seconds * FPS, args.gop, seed=seconds * 1000 + n)
                clips.append(clip)
            size = sum(c.stat().st_size for c in clips) / len(clips) / 1e6
            made = time.perf_counter() - started
            print(f"\n{seconds} s clips: {count} x {size:.2f} MB ({made:.1f} s to make)")
            check_same_frames(clips)
            print("  same indices and pixels as the Cookbook loop: yes")
            batch = clips * repeat
            rates = {}
            for method in ("baseline", "ours"):
                out = workdir / f"jpeg-{method}"
                out.mkdir(exist_ok=True)
                wall, inside = run(method, batch, out, cpu)
                rates[method] = len(batch) / wall
                print(
                    f"  {method:8s}: {inside / len(batch) * 1000:7.1f} ms/clip in-process, "
                    f"{rates[method]:6.1f} videos/s incl. start-up "
                    f"({len(batch)} videos, {wall:.2f} s)"
                )
                shutil.rmtree(out)
            target = 2 if seconds == 7 else 8
            ratio = rates["ours"] / rates["baseline"]
            print(
                f"  ratio: {ratio:.1f}x (target {target}x) {'OK' if ratio >= target else 'MISSED'}"
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
