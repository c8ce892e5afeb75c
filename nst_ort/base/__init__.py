"""The base: what every layer stands on and that knows nothing of style transfer: the error types
with their exit codes (errors), atomic file writes (atomic), optional dependencies with the extra
that installs each, onnxruntime's distributions among them (extras), and the version. Modules here
import only the standard library, third-party packages and each other; nothing from media, engine
or commands (tests/test_layers.py checks).
"""
