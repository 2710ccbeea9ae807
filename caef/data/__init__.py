"""Datasets: VOC 2012, MS-COCO 2014 and the generated dataset behind one reader interface."""
