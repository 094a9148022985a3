"""The device bundle: the frozen backbone as ONNX graphs, run by ONNX Runtime with no training framework (design §3).

``mobillm.export`` (torch side) writes a bundle; ``mobillm.bundle.runtime`` (numpy + onnxruntime +
tokenizers, never torch) runs it. This package imports neither, so the device imports only the runtime.
"""

from mobillm.bundle.config import BUNDLE_FILES, WEIGHT_FORMATS, BundleConfig

__all__ = ["BUNDLE_FILES", "WEIGHT_FORMATS", "BundleConfig"]
