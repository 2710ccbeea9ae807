"""Callbacks: CAM scoring and visualisation (W&B), CAM export, pseudo labels and their score, run safety."""

from caef.callbacks.atomic_checkpoint import AtomicCheckpointIO, install_atomic_checkpoints
from caef.callbacks.cam_miou import CAMScore
from caef.callbacks.cam_visualization import CAMVisualization
from caef.callbacks.cam_writer import CAMWriter
from caef.callbacks.finite_loss import FiniteLossGuard
from caef.callbacks.pseudo_label_score import PseudoLabelScore
from caef.callbacks.pseudo_label_writer import PseudoLabelWriter
from caef.callbacks.rng_state import RNGStateCheckpoint
from caef.callbacks.segmentation_score import SegmentationScore
from caef.callbacks.segmentation_writer import SegmentationWriter

__all__ = [
    "AtomicCheckpointIO",
    "CAMScore",
    "CAMVisualization",
    "CAMWriter",
    "FiniteLossGuard",
    "PseudoLabelScore",
    "PseudoLabelWriter",
    "RNGStateCheckpoint",
    "SegmentationScore",
    "SegmentationWriter",
    "install_atomic_checkpoints",
]
