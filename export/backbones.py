"""The backbone registry: name -> Entry (what `nst-ort-export --list` shows; calling it builds the
Backbone). The families live in their own modules (vgg.py, resnet.py) on the shared types of
network.py; ONNX classifiers are imported instead (onnx_import.py, `nst-ort-export import`)."""
from __future__ import annotations

from .network import Entry
from .resnet import resnet_entries
from .vgg import vgg_entries

REGISTRY: dict[str, Entry] = {**vgg_entries(), **resnet_entries()}
