"""convlint: a static analyzer and linter for convolutions in ONNX model graphs."""

__version__ = "0.1.0"
