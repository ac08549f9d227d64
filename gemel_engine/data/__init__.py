"""Camera sources (synthetic scenes, video files, image folders, network streams) and frame sampling."""

from __future__ import annotations

from gemel_engine.data.folder import ImageFolderSource
from gemel_engine.data.frames import Box, CameraSource, Frame
from gemel_engine.data.sampling import (
    FrameCache,
    FrameSet,
    SamplingSpec,
    resize_frame,
    sample_frames,
    split_by_time,
)
from gemel_engine.data.sources import open_source
from gemel_engine.data.stream import Backoff, StreamSource
from gemel_engine.data.synthetic import CLASSES, SceneConfig, SyntheticCamera
from gemel_engine.data.video import VideoFileSource, write_video

__all__ = [
    "CLASSES",
    "Backoff",
    "Box",
    "CameraSource",
    "Frame",
    "FrameCache",
    "FrameSet",
    "ImageFolderSource",
    "SamplingSpec",
    "SceneConfig",
    "StreamSource",
    "SyntheticCamera",
    "VideoFileSource",
    "open_source",
    "resize_frame",
    "sample_frames",
    "split_by_time",
    "write_video",
]
