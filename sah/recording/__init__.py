"""Recorded attention tensors: the format, the recorder, the default and synthetic recordings."""

from sah.recording.format import LayerRecording, Recording, RecordingError, load_recording, save_recording
from sah.recording.positions import decode_query_positions
from sah.recording.synthetic import make_synthetic_recording

__all__ = ["LayerRecording", "Recording", "RecordingError", "load_recording", "save_recording",
           "decode_query_positions", "make_synthetic_recording"]
