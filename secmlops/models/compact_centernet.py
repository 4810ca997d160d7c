"""A compact CenterNet-style pedestrian detector designed to train on a CPU.

Objects as points (Zhou, Wang, Kraehenbuehl, 2019, arXiv:1904.07850): every person is the peak of
a heatmap at its box centre, with its size and sub-cell offset regressed at that peak. There are
no anchors and no NMS-heavy post-processing, which keeps training and adversarial attacks cheap.
The elliptical Gaussian targets follow TTFNet (Liu et al., 2020, arXiv:1909.00700), which suits
tall, narrow pedestrians better than CenterNet's circular ones.

Contract (torchvision detection models, so ART and the rest of the pipeline treat it like one):
- train mode: `model(images, targets) -> {"loss_heatmap", "loss_size", "loss_offset"}`
- eval mode:  `model(images) -> [{"boxes" [N,4] x1y1x2y2, "labels" [N] (1 = person), "scores" [N]}]`
`images` is a list of float [3,H,W] tensors in [0,1] (or one [B,3,H,W] tensor); boxes are in each
image's own pixels. The model resizes internally to `input_size`, so callers never do.
Targets may carry `"ignore"` [M,4]: regions where a detection is neither rewarded nor punished.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, generalized_box_iou_loss

LOSS_KEYS = ("loss_heatmap", "loss_size", "loss_offset")
# Pixel statistics of outdoor street scenes; fixed so the model needs no data at build time.
_MEAN = (0.45, 0.45, 0.45)
_STD = (0.25, 0.25, 0.25)


class ConvBNAct(nn.Sequential):
    """3x3 (or kxk) convolution, batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class CompactCenterNet(nn.Module):
    """CenterNet with a small strided CNN backbone and a top-down neck to stride 4.

    Args:
        input_size: (height, width) every image is resized to.
        widths: channels at strides 4, 8, 16, 32.
        neck_width: channels of the top-down neck at strides 8 and 16 (stride 4 uses widths[0]).
        score_threshold: minimum score of a returned detection.
        max_detections: detections kept per image.
        nms_iou: IoU above which overlapping detections are merged (CenterNet's peak picking
            leaves a few duplicates on large people).
        giou_weight: weight of a GIoU loss (Rezatofighi et al., CVPR 2019, arXiv:1902.09630)
            on the box decoded at each person's centre cell, added to `loss_size` (0: L1 on
            log-size and offset alone). L1 on log-size judges width and height apart; GIoU
            judges the overlap the AP@[.5:.95] figures count.
        box_region: regress each person's box at every output cell within this fraction of
            its width and height around its centre (TTFNet's Gaussian-area samples, Liu et al.
            2020: more samples per person train the box heads in fewer steps), each cell
            weighted by the person's Gaussian and log-area; of a cell two people share, the
            one centred there owns it, else the smaller. 0: the centre cell alone (CenterNet).
        input_bits: round every input pixel to this many bits first (None: no rounding). This
            is feature squeezing's bit-depth reduction (Xu, Evans, Qi 2018, arXiv:1704.01155);
            its gradient is zero almost everywhere, so it MASKS gradients rather than adding
            robustness (Athalye et al. 2018). It exists so the evaluation's sanity checks can be
            shown to catch a masked model; do not ship it as a defence.
    """

    stride = 4
    pixel_mean: Tensor  # buffers registered in __init__ (declared so they type as tensors)
    pixel_std: Tensor

    def __init__(
        self,
        input_size: Sequence[int] = (240, 320),
        widths: Sequence[int] = (24, 48, 96, 128),
        neck_width: int = 64,
        score_threshold: float = 0.05,
        max_detections: int = 100,
        nms_iou: float = 0.6,
        giou_weight: float = 0.0,
        box_region: float = 0.0,
        input_bits: int | None = None,
    ) -> None:
        super().__init__()
        if len(input_size) != 2 or any(int(s) % 16 for s in input_size):
            raise ValueError(
                f"input_size must be (height, width), multiples of 16; got {input_size}"
            )
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.nms_iou = nms_iou
        if not 0 <= giou_weight <= 10:
            raise ValueError(f"giou_weight must be in [0, 10], got {giou_weight}")
        self.giou_weight = giou_weight
        if not 0 <= box_region <= 1:
            raise ValueError(f"box_region must be in [0, 1], got {box_region}")
        self.box_region = box_region
        if input_bits is not None and not 1 <= input_bits <= 8:
            raise ValueError(f"input_bits must be 1..8 (or None), got {input_bits}")
        self.input_bits = input_bits
        w4, w8, w16, w32 = widths
        self.register_buffer("pixel_mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.stage4 = nn.Sequential(ConvBNAct(3, 16, 2), ConvBNAct(16, w4, 2), ConvBNAct(w4, w4))
        self.stage8 = nn.Sequential(ConvBNAct(w4, w8, 2), ConvBNAct(w8, w8))
        self.stage16 = nn.Sequential(ConvBNAct(w8, w16, 2), ConvBNAct(w16, w16))
        self.stage32 = nn.Sequential(ConvBNAct(w16, w32, 2), ConvBNAct(w32, w32))
        self.lateral32 = nn.Conv2d(w32, neck_width, 1)
        self.lateral16 = nn.Conv2d(w16, neck_width, 1)
        self.lateral8 = nn.Conv2d(w8, neck_width, 1)
        self.smooth16 = ConvBNAct(neck_width, neck_width)
        self.smooth8 = ConvBNAct(neck_width, neck_width)
        self.reduce8 = nn.Conv2d(neck_width, w4, 1)
        self.smooth4 = ConvBNAct(w4, w4)
        self.head = nn.Sequential(ConvBNAct(w4, w4), nn.Conv2d(w4, 5, 1))
        # Start the heatmap at a 1% prior so early training is not swamped by easy negatives
        # (focal-loss initialisation, Lin et al. 2017).
        bias = cast(Tensor, self.head[-1].bias)  # nn.Module attributes type as Tensor | Module
        nn.init.constant_(bias[:1], -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(bias[1:])

    # ----------------------------------------------------------------------------- forward
    def forward(
        self, images: Sequence[Tensor] | Tensor, targets: Sequence[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in train mode (targets required), detections in eval mode."""
        batch, original_sizes = self._prepare(images)
        heatmap, size, offset = self._raw_outputs(batch)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            scaled = _scale_targets(targets, original_sizes, self.input_size)
            return centernet_losses(
                heatmap, size, offset, scaled, self.stride,
                giou_weight=self.giou_weight, box_region=self.box_region,
            )  # fmt: skip
        return self._decode(heatmap, size, offset, original_sizes)

    def objectness_logits(self, images: Sequence[Tensor] | Tensor) -> Tensor:
        """Raw person-centre logits [B, H/4, W/4] on the input-size grid (stride 4).

        What the score-level attacks (vanishing, fabrication, person-worn patch) act on: a
        detection's score is the sigmoid of a local maximum of this map. Works in train or eval
        mode; the caller decides whether gradients flow.
        """
        batch, _ = self._prepare(images)
        heatmap, _, _ = self._raw_outputs(batch)
        return heatmap[:, 0]

    def _prepare(self, images: Sequence[Tensor] | Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
        if isinstance(images, Tensor) and images.dim() == 4:
            sizes = [(int(images.shape[-2]), int(images.shape[-1]))] * images.shape[0]
            batch = resize_to_input(images, self.input_size)
        else:
            sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
            batch = torch.cat([resize_to_input(im.unsqueeze(0), self.input_size) for im in images])
        if self.input_bits is not None:
            levels = 2**self.input_bits - 1
            batch = torch.round(batch * levels) / levels
        batch = (batch - self.pixel_mean) / self.pixel_std
        return batch.contiguous(memory_format=torch.channels_last), sizes

    def _raw_outputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c4 = self.stage4(x)
        c8 = self.stage8(c4)
        c16 = self.stage16(c8)
        c32 = self.stage32(c16)
        p16 = self.smooth16(self.lateral16(c16) + _upsample_to(self.lateral32(c32), c16))
        p8 = self.smooth8(self.lateral8(c8) + _upsample_to(p16, c8))
        p4 = self.smooth4(c4 + _upsample_to(self.reduce8(p8), c4))
        out = self.head(p4).float()
        return out[:, :1], out[:, 1:3], out[:, 3:5]

    # ------------------------------------------------------------------------------ decode
    def _decode(
        self, heatmap: Tensor, size: Tensor, offset: Tensor, original_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        heat = heatmap.sigmoid()
        peaks = heat == F.max_pool2d(heat, 3, stride=1, padding=1)
        heat = heat * peaks
        b, _, h, w = heat.shape
        k = min(self.max_detections, h * w)
        scores, index = heat.view(b, -1).topk(k)
        ys, xs = (index // w).float(), (index % w).float()
        off = offset.reshape(b, 2, -1).gather(2, index.unsqueeze(1).expand(-1, 2, -1))
        wh = (
            size.reshape(b, 2, -1)
            .gather(2, index.unsqueeze(1).expand(-1, 2, -1))
            .clamp(max=8)
            .exp()
        )
        cx, cy = (xs + off[:, 0]) * self.stride, (ys + off[:, 1]) * self.stride
        bw, bh = wh[:, 0] * self.stride, wh[:, 1] * self.stride
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
        results = []
        in_h, in_w = self.input_size
        for i, (height, width) in enumerate(original_sizes):
            keep = scores[i] >= self.score_threshold
            s, bx = scores[i][keep], boxes[i][keep]
            scale = bx.new_tensor([width / in_w, height / in_h, width / in_w, height / in_h])
            bx = bx * scale
            bx[:, 0::2] = bx[:, 0::2].clamp(0, width)
            bx[:, 1::2] = bx[:, 1::2].clamp(0, height)
            valid = (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])
            bx, s = bx[valid], s[valid]
            labels = torch.ones_like(s, dtype=torch.int64)
            if self.nms_iou < 1.0 and len(s):
                kept = batched_nms(bx, s, labels, self.nms_iou)
                bx, s, labels = bx[kept], s[kept], labels[kept]
            results.append({"boxes": bx, "labels": labels, "scores": s})
        return results


def resize_to_input(batch: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize float [B,3,H,W] to `size` (height, width), antialiased when shrinking."""
    if tuple(batch.shape[-2:]) == size:
        return batch
    shrinking = batch.shape[-2] > size[0] or batch.shape[-1] > size[1]
    # Antialiasing when shrinking keeps thin limbs from aliasing away (it is differentiable,
    # so attacks still see true gradients).
    return F.interpolate(
        batch, size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )


def _upsample_to(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


def _scale_targets(
    targets: Sequence[dict[str, Tensor]],
    original_sizes: list[tuple[int, int]],
    input_size: tuple[int, int],
) -> list[dict[str, Tensor]]:
    scaled = []
    for target, (height, width) in zip(targets, original_sizes, strict=True):
        factor = torch.tensor(
            [input_size[1] / width, input_size[0] / height] * 2, device=target["boxes"].device
        )
        item = {"boxes": target["boxes"].reshape(-1, 4).float() * factor}
        if "ignore" in target:
            item["ignore"] = target["ignore"].reshape(-1, 4).float() * factor
        scaled.append(item)
    return scaled


def centernet_losses(
    heatmap: Tensor,
    size: Tensor,
    offset: Tensor,
    targets: Sequence[dict[str, Tensor]],
    stride: int,
    gaussian_alpha: float = 0.54,
    giou_weight: float = 0.0,
    box_region: float = 0.0,
) -> dict[str, Tensor]:
    """CenterNet losses: penalty-reduced focal loss on the heatmap, L1 on log-size and offset
    (plus `giou_weight` x GIoU of the decoded box, in `loss_size`), at each person's centre
    cell or, with `box_region`, at the cells around it (see `CompactCenterNet`).

    Args:
        heatmap, size, offset: raw head outputs [B,1,h,w], [B,2,h,w], [B,2,h,w].
        targets: per image `boxes` [N,4] (and optional `ignore` [M,4]) in input pixels.
        stride: input pixels per output cell.
        gaussian_alpha: TTFNet's Gaussian radius factor (sigma = alpha * side / 6).

    Returns:
        `loss_heatmap`, `loss_size`, `loss_offset` (each a scalar tensor).
    """
    b, _, h, w = heatmap.shape
    device = heatmap.device
    boxes_list = [t["boxes"].to(device) / stride for t in targets]
    counts = torch.tensor([len(bx) for bx in boxes_list], device=device)
    boxes = torch.cat(boxes_list) if boxes_list else heatmap.new_zeros(0, 4)
    batch_index = torch.repeat_interleave(torch.arange(b, device=device), counts)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, batch_index = boxes[valid], batch_index[valid]
    centre = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], -1)
    centre = torch.stack([centre[:, 0].clamp(0, w - 1e-3), centre[:, 1].clamp(0, h - 1e-3)], -1)
    cell = centre.floor()
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-2)

    target_heat = heatmap.new_zeros(b, h * w)
    if len(boxes):
        sigma = (wh * gaussian_alpha / 6).clamp(min=0.5)
        gy = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1)
        gx = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, w)
        dx2 = (gx - cell[:, 0].view(-1, 1, 1)) ** 2 / (2 * sigma[:, 0].view(-1, 1, 1) ** 2)
        dy2 = (gy - cell[:, 1].view(-1, 1, 1)) ** 2 / (2 * sigma[:, 1].view(-1, 1, 1) ** 2)
        gaussians = torch.exp(-(dx2 + dy2)).view(len(boxes), -1)
        target_heat.scatter_reduce_(0, batch_index.view(-1, 1).expand(-1, h * w), gaussians, "amax")
    target_heat = target_heat.view(b, 1, h, w)
    negative_weight = (1 - target_heat) ** 4
    for i, target in enumerate(targets):
        ignore = target.get("ignore")
        if ignore is not None and len(ignore):
            negative_weight[i, 0] *= 1 - _region_mask(ignore.to(device) / stride, h, w)
    positive = target_heat.eq(1.0).float()
    # Where an ignore region covers a person's own peak, the peak still counts as positive.
    log_p = F.logsigmoid(heatmap)
    log_not_p = F.logsigmoid(-heatmap)
    p = heatmap.sigmoid()
    pos_loss = -(positive * (1 - p) ** 2 * log_p).sum()
    neg_loss = -((1 - positive) * negative_weight * p**2 * log_not_p).sum()
    num_pos = positive.sum().clamp(min=1.0)
    loss_heatmap = (pos_loss + neg_loss) / num_pos

    if len(boxes):
        owner, flat, weight = _box_samples(centre, wh, batch_index, b, h, w, box_region, stride)
        sample_cell = torch.stack([flat % w, flat // w], -1).float()
        sample_batch = batch_index[owner]
        pred_size = size.permute(0, 2, 3, 1).reshape(b, h * w, 2)[sample_batch, flat]
        pred_offset = offset.permute(0, 2, 3, 1).reshape(b, h * w, 2)[sample_batch, flat]
        weight = weight / weight.sum()

        def weighted_mean(loss: Tensor) -> Tensor:
            # At the centre cells alone every weight is equal: the plain mean, which replays
            # the runs from before box regions bit for bit.
            return (
                loss.mean()
                if box_region <= 0
                else (loss.reshape(len(weight), -1).mean(-1) * weight).sum()
            )

        loss_size = weighted_mean(F.l1_loss(pred_size, wh[owner].log(), reduction="none"))
        loss_offset = weighted_mean(
            F.l1_loss(pred_offset, centre[owner] - sample_cell, reduction="none")
        )
        if giou_weight:
            # The box the decoder would output at this cell (same clamp), in cell units.
            pred_centre = sample_cell + pred_offset
            pred_wh = pred_size.clamp(max=8).exp()
            pred_box = torch.cat([pred_centre - pred_wh / 2, pred_centre + pred_wh / 2], -1)
            giou = generalized_box_iou_loss(pred_box, boxes[owner], reduction="none")
            loss_size = loss_size + giou_weight * weighted_mean(giou)
    else:
        # Keep the graph connected so gradients (and attacks) still flow through every head.
        loss_size = size.sum() * 0.0
        loss_offset = offset.sum() * 0.0
    return {"loss_heatmap": loss_heatmap, "loss_size": loss_size, "loss_offset": loss_offset}


def _box_samples(
    centre: Tensor, wh: Tensor, batch_index: Tensor, b: int, h: int, w: int, region: float,
    stride: int,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The cells each box's size and offset are learnt at: (box index, flat cell, weight).

    `centre` (clamped into the map) and `wh` are the boxes' centres and sizes in cells.
    `region` 0: each box's centre cell, weight 1 (CenterNet). Otherwise every cell whose centre
    lies within `region` x the box's width and height around its centre (the centre cell
    always), weighted by a Gaussian of the box's shape x log of its area (TTFNet), normalised
    per box; where boxes of one image overlap, a box's own centre cell stays its own and the
    smallest box owns the other shared cells.
    """
    count, device = len(centre), centre.device
    centre_cell = centre.floor()
    centre_flat = (centre_cell[:, 1] * w + centre_cell[:, 0]).long()
    if region <= 0:
        return torch.arange(count, device=device), centre_flat, centre.new_ones(count)
    ys = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, w) + 0.5
    dx = (xs - centre[:, 0].view(-1, 1, 1)) / wh[:, 0].view(-1, 1, 1)
    dy = (ys - centre[:, 1].view(-1, 1, 1)) / wh[:, 1].view(-1, 1, 1)
    inside = (dx.abs() <= region / 2) & (dy.abs() <= region / 2)
    inside = inside.view(count, -1)
    own_centre = torch.zeros_like(inside)
    own_centre[torch.arange(count), centre_flat] = True
    inside |= own_centre
    # Ownership: per image and cell, a box whose centre it is, else the smallest box covering it
    # (ties to the later box): the cell a detection is decoded at always learns its own box.
    area = wh[:, 0] * wh[:, 1]
    rank = -area + torch.arange(count, device=device) * 1e-6
    claim = torch.where(inside, rank.view(-1, 1) + own_centre * 1e9, -math.inf)
    best = claim.new_full((b, h * w), -math.inf)
    best.scatter_reduce_(0, batch_index.view(-1, 1).expand(-1, h * w), claim, "amax")
    owned = inside & (claim == best[batch_index])
    owner, flat = owned.nonzero(as_tuple=True)
    # sigma = side / 6 over the region, as the heatmap's Gaussian (TTFNet's beta = alpha).
    distance2 = (dx**2 + dy**2).view(count, -1)[owner, flat]
    gauss = torch.exp(-distance2 * 18 / region**2)
    per_box = gauss.new_zeros(count).index_add_(0, owner, gauss)
    # log of the area in input pixels (at least 1): larger people weigh a little more.
    weight = gauss / per_box[owner] * (area[owner] * stride**2).clamp(min=math.e).log()
    return owner, flat, weight


def _region_mask(regions: Tensor, h: int, w: int) -> Tensor:
    """1 on output cells whose centre lies inside any of `regions` (x1y1x2y2, cell units)."""
    ys = torch.arange(h, device=regions.device, dtype=torch.float32).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=regions.device, dtype=torch.float32).view(1, 1, w) + 0.5
    r = regions.view(-1, 4, 1, 1)
    inside = (xs >= r[:, 0]) & (xs <= r[:, 2]) & (ys >= r[:, 1]) & (ys <= r[:, 3])
    return inside.any(dim=0).float()
