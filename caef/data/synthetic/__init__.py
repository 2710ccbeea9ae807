"""The embedded generated dataset: a PASCAL VOC 2012 tree that reproduces the partial-CAM problem.

VOC and COCO cannot be downloaded everywhere, so ``generate`` writes a small dataset in the exact VOC 2012 layout
(``JPEGImages``, ``Annotations``, ``SegmentationClass[Aug]``, ``ImageSets/Segmentation/{train_aug,train,val}.txt``
plus ``classes.txt`` naming the foreground classes), which the VOC reader loads unchanged.

Why it yields partial CAMs. Every object of class ``c`` has two parts:

* a large irregular **body** (radially perturbed ellipse, 8-25% of the image, random position, scale, rotation)
  filled with a *weak* class cue: a low-contrast texture (stripes, a rectangular dot lattice or zigzags) whose
  orientation and period are class-specific, laid over a base colour drawn from one distribution shared by all
  classes (colour says nothing about the class) with shading and noise;
* a compact **head** (a disc of 8-15% of the body area, inside the body near its rim) painted with saturated,
  high-contrast rings in two class-specific colours: by far the easiest cue.

A classifier minimising its loss latches onto the head, so its CAM peaks there and misses most of the body: the
situation adversarial erasing is meant to fix. With probability ``hidden_part_prob`` the head is not drawn
(occluded or absent), so the body cue is needed too and always suffices to name the class; erasing the head
therefore leaves a learnable signal on the body, which is what a CAM-generation network must learn to cover.

Backgrounds are textured (smooth colour value noise at two scales, soft blotches, faint lines) and differ per image.
Images hold 1..``max_objects`` objects (classes may repeat) in z-order: later objects occlude earlier ones and the
mask follows the visible pixels; an object left with too little visible area is removed before painting. Masks hold
the class index (1..C) on body and head pixels, 0 elsewhere, and optionally a VOC-like 255 band
(``ignore_border``). Per-object metadata (class, bbox, head drawn/visible, head bbox) goes to
``caef_meta/objects.json``; ``caef_synth.json`` is the manifest. Output is byte-identical for the same config.
"""

from caef.data.synthetic.config import MANIFEST, META, VOC_SUBDIR, SynthConfig, class_names, describe
from caef.data.synthetic.render import render
from caef.data.synthetic.tree import generate, read_manifest, read_meta

__all__ = [
    "MANIFEST",
    "META",
    "VOC_SUBDIR",
    "SynthConfig",
    "class_names",
    "describe",
    "generate",
    "read_manifest",
    "read_meta",
    "render",
]
