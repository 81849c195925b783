"""Inference: a checkpoint made a ready model, evaluation and ensembles, prediction on image files, export and
the ONNX runtime."""
