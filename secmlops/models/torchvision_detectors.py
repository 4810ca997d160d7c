"""Torchvision detection architectures, built without pretrained weights, for GPU workers.

They follow the same contract as the compact detector (they define it), so training, ART
evaluation and serving need no special cases. Nothing is downloaded: `weights=None` and
`weights_backbone=None` always, because run time has no internet and unsigned downloaded weights
would bypass the supply-chain controls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

NUM_CLASSES = 2  # background + person


def _fasterrcnn_mobilenet(input_size: Sequence[int], **kwargs: object) -> nn.Module:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    return fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES,
        min_size=min(input_size),
        max_size=max(input_size),
        **kwargs,
    )


def _fcos_resnet50(input_size: Sequence[int], **kwargs: object) -> nn.Module:
    from torchvision.models.detection import fcos_resnet50_fpn

    return fcos_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES,
        min_size=min(input_size),
        max_size=max(input_size),
        **kwargs,
    )


def _ssdlite320(input_size: Sequence[int], **kwargs: object) -> nn.Module:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    # SSDlite resizes to a fixed 320x320 by design; input_size is recorded but not used.
    return ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, **kwargs
    )


TORCHVISION_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "fasterrcnn_mobilenet_v3": _fasterrcnn_mobilenet,
    "fcos_resnet50": _fcos_resnet50,
    "ssdlite320": _ssdlite320,
}

# Loss keys of each architecture's training-mode output, for ART's `attack_losses`.
TORCHVISION_LOSS_KEYS: dict[str, tuple[str, ...]] = {
    "fasterrcnn_mobilenet_v3": (
        "loss_classifier",
        "loss_box_reg",
        "loss_objectness",
        "loss_rpn_box_reg",
    ),
    "fcos_resnet50": ("classification", "bbox_regression", "bbox_ctrness"),
    "ssdlite320": ("bbox_regression", "classification"),
}
