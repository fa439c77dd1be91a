"""Decoding through the gaps between segments instead of seeking to each (`_DecoderCursor`): the same frames and
samples as a seek per group, fewer seeks on long-GOP sources, and no change where keyframes are dense."""

from __future__ import annotations

import numpy as np
import pytest

from pemt.model.media_pemt import MediaClip, SegmentTiming, open_media
from tests.media_fixtures import write_media

# 8 frames at stride 2 of 25 fps: 0.64-s segments every 1.2 s leave 0.56-s gaps, more than the 0.25 s merged anyway.
TIMING = SegmentTiming(frames_per_segment=8, frame_stride=2, video_fps=25.0, audio_sampling_rate=16000)
STARTS = [round(1.2 * i, 2) for i in range(7)]


def read(path, starts, decode_through_gaps: bool, monkeypatch):
    monkeypatch.setattr(MediaClip, "decode_through_gaps", decode_through_gaps)
    with open_media(path) as clip:
        segments = clip.read_segments(starts, TIMING, max_short_side=32)
        return segments, clip.video_seeks


@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
def test_long_gop_decodes_on_through_gaps_with_the_frames_of_a_seek_per_group(tmp_path, suffix, monkeypatch):
    # x264's default keyframe interval (250 frames) puts the whole 9-s clip in one GOP: every seek lands at 0.
    path = write_media(tmp_path / f"long_gop{suffix}", seconds=9.0, fps=25, size=(48, 64), textured=True)
    seeking, seeks_per_group = read(path, STARTS, False, monkeypatch)
    decoding_on, seeks = read(path, STARTS, True, monkeypatch)
    assert seeks_per_group == len(STARTS)
    assert seeks < len(STARTS) / 2
    np.testing.assert_array_equal(decoding_on.frames, seeking.frames)
    np.testing.assert_array_equal(decoding_on.video_valid, seeking.video_valid)
    np.testing.assert_array_equal(decoding_on.waveform, seeking.waveform)
    assert decoding_on.video_valid.all()
    # Negative control: segments one sampled frame later are different pictures, so the comparison above sees a frame
    # held or dropped at a group's start.
    step = TIMING.frame_stride / TIMING.video_fps
    shifted, _ = read(path, [s + step for s in STARTS], True, monkeypatch)
    for i in range(len(STARTS)):
        assert not np.array_equal(shifted.frames[i], seeking.frames[i])
        np.testing.assert_array_equal(shifted.frames[i, :-1], seeking.frames[i, 1:])


def test_dense_keyframes_keep_seeking(tmp_path, monkeypatch):
    # A prepared shard's layout: a keyframe every 8 frames (0.32 s here); a seek re-decodes less than the 0.56-s gap.
    path = write_media(tmp_path / "short_gop.mp4", seconds=9.0, fps=25, size=(48, 64), textured=True, gop=8)
    seeking, _ = read(path, STARTS, False, monkeypatch)
    decoding_on, seeks = read(path, STARTS, True, monkeypatch)
    assert seeks == len(STARTS)
    np.testing.assert_array_equal(decoding_on.frames, seeking.frames)


def test_truncated_long_gop_file_masks_the_same_segments(tmp_path, monkeypatch):
    # Matroska keeps its header first, so a cut file opens and decodes up to the cut.
    path = write_media(tmp_path / "whole.mkv", seconds=9.0, fps=25, size=(48, 64), textured=True)
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 2 // 3])
    seeking, _ = read(cut, STARTS, False, monkeypatch)
    decoding_on, _ = read(cut, STARTS, True, monkeypatch)
    assert not seeking.video_valid.all()
    np.testing.assert_array_equal(decoding_on.video_valid, seeking.video_valid)
    valid = seeking.video_valid
    np.testing.assert_array_equal(decoding_on.frames[valid], seeking.frames[valid])


def test_the_frame_a_group_stopped_at_starts_the_next(tmp_path, monkeypatch):
    # At 4 fps the first frame past one group (0.75 s) is the frame the next group (from 0.9 s) begins with.
    path = write_media(tmp_path / "sparse.mp4", seconds=5.0, fps=4, size=(48, 64), textured=True)
    starts = [0.0, 0.9, 1.8, 2.7]
    seeking, _ = read(path, starts, False, monkeypatch)
    decoding_on, seeks = read(path, starts, True, monkeypatch)
    assert seeks == 1
    np.testing.assert_array_equal(decoding_on.frames, seeking.frames)
    # Negative control: times 0.9 and 0.98 take the 0.75-s frame, 1.06 the 1.0-s one, and the two differ, so a cursor
    # that dropped the frame it stopped at (and began the group with the 1.0-s frame) would fail the comparison.
    np.testing.assert_array_equal(seeking.frames[1, 0], seeking.frames[1, 1])
    assert not np.array_equal(seeking.frames[1, 1], seeking.frames[1, 2])
