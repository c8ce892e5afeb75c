"""The commands on top of the engine: the `nst-ort` entry point and its checks (entry), the parser
(flags), the one-image and batch CLI (cli, sources, describe, presets, report), `nst-ort check`,
`nst-ort web` (web, web_http, ort_web), `nst-ort video` (video, video_frames, video_job) and the Ray
scale-out (distributed, ray_cluster). Modules here may import every layer below and each other
(without a circle); nothing below imports them (tests/test_layers.py checks).
"""
