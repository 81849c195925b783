"""cnnctl: train, evaluate and run image-classification CNNs from YAML configs."""

__version__ = "0.1.0"
