"""Media: pixels and files in and out, without ONNX: images (probe, load, resize, save), color
transfer, the paths a run writes checked against what it reads (outputs), video decoding and encoding
(video_io, PyAV), optical flow (flow, OpenCV) and synthetic clips with known motion. Modules here may
import the base and each other; never the engine or the commands (tests/test_layers.py checks).
"""
