"""Networks: backbones with addressable stages, and the CAM network built on them."""
