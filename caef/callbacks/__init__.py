"""Callbacks: CAM scoring, CAM visualisation to W&B, CAM export, pseudo labels by random walk."""

from caef.callbacks.cam_miou import CAMScore
from caef.callbacks.cam_visualization import CAMVisualization
from caef.callbacks.cam_writer import CAMWriter
from caef.callbacks.pseudo_label_writer import PseudoLabelWriter

__all__ = ["CAMScore", "CAMVisualization", "CAMWriter", "PseudoLabelWriter"]
