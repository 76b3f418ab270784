"""Lightning training from YAML configs (the machinery behind main.py): command line and config
reading, run directories, crash-safe checkpoints, callbacks and the data module."""
