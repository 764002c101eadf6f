"""Camera preview: Source -> Enhancer -> Sink with latest-frame-wins, a web viewfinder, video files.

Nothing here opens a camera, imports OpenCV / picamera2 or probes the platform at import time.

>>> from edge_enhance.camera import Preview, PreviewConfig, NullSink, SyntheticSource
"""
from .controls import Controls
from .errors import SinkError, SourceError, SourceLostError
from .preview import AdaptiveController, Preview, PreviewConfig
from .sinks import NullSink, Result, Sink, VideoFileSink, WindowSink
from .sources import FolderSource, OpenCVSource, PiCamera2Source, Source, SyntheticSource, VideoFileSource, open_source
from .stats import Stats, StatsJsonWriter
from .video import enhance_video, is_video_path

__all__ = [
    "AdaptiveController", "Controls", "FolderSource", "NullSink", "OpenCVSource", "PiCamera2Source", "Preview",
    "PreviewConfig", "Result", "Sink", "SinkError", "Source", "SourceError", "SourceLostError", "Stats",
    "StatsJsonWriter", "SyntheticSource", "VideoFileSink", "VideoFileSource", "WindowSink", "enhance_video",
    "is_video_path", "open_source",
]


def __getattr__(name):
    if name == "WebViewfinder":  # http.server only when asked for
        from .web import WebViewfinder

        return WebViewfinder
    raise AttributeError(name)
