"""The structure-from-motion choices `main.py process` offers, as plain data: the CLI
lists them in --help without loading torch or pycolmap."""
MATCHERS = ("auto", "exhaustive", "sequential")
CAMERA_MODELS = ("OPENCV", "SIMPLE_RADIAL", "RADIAL", "PINHOLE", "SIMPLE_PINHOLE", "OPENCV_FISHEYE")
# Exhaustive matching is quadratic: 150 photos are 11,175 pairs, about as many as this
# 2-core CPU matches in a few minutes; beyond that unordered photos go sequential.
EXHAUSTIVE_MAX = 150
