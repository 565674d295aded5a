"""The NeRF's named network sizes, as plain data (the CLI lists them without torch).

'paper' is NeRF as published; 'cpu' keeps the architecture family but narrower and with
fewer samples, so a 2-core CPU gets thousands of steps in minutes.
"""
PRESETS = {
    "paper": dict(width=256, depth=8, n_coarse=64, n_fine=128),
    "cpu": dict(width=128, depth=4, skips=[], dir_width=64, n_coarse=32, n_fine=32),
}
