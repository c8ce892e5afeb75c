"""The engine every runtime stands on (the CLI, video, Ray, check; web/js ports it): the typed
config, the artifact folder and its contract, execution providers and sessions (with their cache),
the host and device loops and their optimizers, loss terms, targets and weights, the Stylizer,
checkpoints, the memory plan and the exact tiled loss. Modules here may import media and the base and
each other (without a circle); never the commands (tests/test_layers.py checks).
"""
