"""Callbacks: CAM scoring, CAM visualisation to W&B, CAM export."""

from caef.callbacks.cam_miou import CAMScore
from caef.callbacks.cam_visualization import CAMVisualization
from caef.callbacks.cam_writer import CAMWriter

__all__ = ["CAMScore", "CAMVisualization", "CAMWriter"]
