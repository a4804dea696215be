"""Recorded attention tensors: the format, the recorder, the default and synthetic recordings."""

from sah.recording.format import LayerRecording, Recording, RecordingError, load_recording, save_recording

__all__ = ["LayerRecording", "Recording", "RecordingError", "load_recording", "save_recording"]
