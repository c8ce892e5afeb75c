"""nst-ort build step: turns a pretrained CNN into gradient-enabled ONNX artifacts (needs torch)."""
