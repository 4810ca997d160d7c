"""The detector contract (torchvision's), the model directory format, and ART compatibility."""

import json

import numpy as np
import pytest
import torch

from secmlops import models
from secmlops.errors import ModelError

SIZE = (96, 128)


@pytest.fixture
def compact():
    torch.manual_seed(0)
    return models.build("compact_centernet", input_size=SIZE, score_threshold=0.0)


def targets_for(*boxes):
    return [
        {
            "boxes": torch.tensor(b, dtype=torch.float32),
            "labels": torch.ones(len(b), dtype=torch.int64),
        }
        for b in boxes
    ]


@pytest.mark.parametrize("name", ["compact_centernet", "fasterrcnn_mobilenet_v3"])
def test_train_mode_returns_losses_and_eval_mode_returns_detections(name):
    torch.manual_seed(0)
    model = models.build(name, input_size=SIZE)
    images = [torch.rand(3, 120, 160), torch.rand(3, 90, 100)]
    model.train()
    losses = model(images, targets_for([[10, 20, 40, 100]], [[5, 5, 50, 80], [60, 10, 90, 85]]))
    assert set(losses) == set(models.loss_keys(name))
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out, (h, w) in zip(outputs, [(120, 160), (90, 100)], strict=True):
        assert set(out) >= {"boxes", "labels", "scores"}
        assert out["boxes"].shape[1:] == (4,)
        assert len(out["boxes"]) == len(out["labels"]) == len(out["scores"])
        if len(out["boxes"]):
            assert out["boxes"][:, 2].max() <= w and out["boxes"][:, 3].max() <= h
            assert (out["labels"] == 1).all()


def test_compact_detector_predicts_in_each_images_own_pixels(compact):
    compact.eval()
    image = torch.rand(3, 192, 256)  # twice the model's input size
    # The model shrinks the big image exactly like this, so the only difference is the scale.
    shrunk = torch.nn.functional.interpolate(
        image[None], size=SIZE, mode="bilinear", align_corners=False, antialias=True
    )[0]
    with torch.no_grad():
        big, small = compact([image])[0], compact([shrunk])[0]
    assert len(big["boxes"]) == len(small["boxes"]) > 0
    assert torch.allclose(big["boxes"] / 2, small["boxes"], atol=1e-3)
    assert torch.allclose(big["scores"], small["scores"], atol=1e-5)


def test_training_mode_without_targets_is_an_error(compact):
    compact.train()
    with pytest.raises(ValueError, match="targets"):
        compact([torch.rand(3, 96, 128)])


def test_ignore_regions_remove_negative_loss(compact):
    compact.train()
    image = [torch.rand(3, 96, 128)]
    plain = compact(image, targets_for([[10, 10, 30, 60]]))["loss_heatmap"]
    with_ignore = targets_for([[10, 10, 30, 60]])
    with_ignore[0]["ignore"] = torch.tensor([[0.0, 0.0, 128.0, 96.0]])
    ignored = compact(image, with_ignore)["loss_heatmap"]
    assert ignored < plain


def test_giou_judges_the_box_overlap_in_the_size_loss():
    """The GIoU term is zero for a box decoded exactly on its target and grows with the
    misfit; without it the size loss is the L1 terms alone."""
    from secmlops.models.compact_centernet import centernet_losses

    heatmap = torch.zeros(1, 1, 24, 32)
    offset = torch.zeros(1, 2, 24, 32)
    target = [{"boxes": torch.tensor([[40.0, 20.0, 56.0, 68.0]])}]  # centre (48, 44), 16 x 48
    cell_x, cell_y = 48 // 4, 44 // 4

    def size_loss(width: float, height: float, weight: float) -> float:
        size = torch.zeros(1, 2, 24, 32)
        size[0, :, cell_y, cell_x] = torch.tensor([width / 4, height / 4]).log()
        losses = centernet_losses(heatmap, size, offset, target, 4, giou_weight=weight)
        return float(losses["loss_size"])

    assert size_loss(16, 48, 1.0) == pytest.approx(0.0, abs=1e-6)
    assert size_loss(8, 24, 1.0) > size_loss(12, 36, 1.0) > 0
    plain, with_giou = size_loss(8, 24, 0.0), size_loss(8, 24, 1.0)
    assert with_giou > plain > 0
    assert with_giou - plain == pytest.approx(1 - 0.25, abs=1e-5)  # IoU 1/4, nested boxes
    with pytest.raises(ModelError, match="giou_weight"):
        models.build("compact_centernet", input_size=SIZE, giou_weight=-1)


def test_save_load_round_trip_gives_identical_predictions(tmp_path, compact):
    compact.eval()
    card = models.save(compact, tmp_path / "m", metrics={"val": {"mAP50": 0.5}})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    loaded = models.load(tmp_path / "m")
    assert not loaded.training
    assert loaded.secmlops_card.weights_sha256 == card.weights_sha256
    image = [torch.rand(3, 96, 128)]
    with torch.no_grad():
        a, b = compact(image)[0], loaded(image)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.json").unlink(), "model.json: missing"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors: missing"),
        (lambda d: (d / "model.json").write_text("{not json"), "malformed model card"),
        (lambda d: _edit_card(d, architecture="resnet9000"), "unknown architecture"),
        (lambda d: _flip_byte(d / "model.safetensors"), "SHA-256 does not match"),
        (lambda d: _swap_weights(d), "weights do not fit"),
    ],
    ids=["no-card", "no-weights", "bad-json", "unknown-arch", "tampered-weights", "wrong-weights"],
)
def test_load_refuses_broken_model_directories(tmp_path, compact, damage, message):
    models.save(compact, tmp_path / "m")
    damage(tmp_path / "m")
    with pytest.raises(ModelError, match=message):
        models.load(tmp_path / "m")


def test_load_of_missing_directory_names_it(tmp_path):
    with pytest.raises(ModelError, match="model directory not found"):
        models.load(tmp_path / "nowhere")


def _edit_card(model_dir, **changes):
    card = json.loads((model_dir / "model.json").read_text())
    card.update(changes)
    (model_dir / "model.json").write_text(json.dumps(card))


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _swap_weights(model_dir):
    """Valid safetensors of a differently shaped model, with a matching digest in the card."""
    other = models.build("compact_centernet", input_size=SIZE, widths=(8, 16, 32, 64))
    models.save(other, model_dir / "other")
    (model_dir / "other" / "model.safetensors").replace(model_dir / "model.safetensors")
    digest = models.sha256_file(model_dir / "model.safetensors")
    _edit_card(model_dir, weights_sha256=digest)


def test_unknown_architecture_and_bad_config_are_model_errors():
    with pytest.raises(ModelError, match="unknown architecture"):
        models.build("yolo99")
    with pytest.raises(ModelError, match="invalid configuration"):
        models.build("compact_centernet", input_size=(100, 130))


def test_art_object_detector_wraps_the_model_predicts_and_runs_fgsm(compact):
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.object_detection import PyTorchObjectDetector

    compact.eval()
    detector = PyTorchObjectDetector(
        model=compact,
        input_shape=(3, *SIZE),
        clip_values=(0, 1),
        channels_first=True,
        attack_losses=models.loss_keys("compact_centernet"),
        device_type="cpu",
    )
    x = np.random.default_rng(0).random((2, 3, *SIZE), dtype=np.float32)
    predictions = detector.predict(x)
    assert len(predictions) == 2 and predictions[0]["boxes"].shape[1] == 4
    labels = [
        {"boxes": np.array([[10, 10, 40, 80]], np.float32), "labels": np.array([1])},
        {"boxes": np.array([[50, 20, 70, 90]], np.float32), "labels": np.array([1])},
    ]
    adversarial = FastGradientMethod(detector, eps=8 / 255).generate(x, y=labels)
    change = np.abs(adversarial - x)
    assert change.max() <= 8 / 255 + 1e-6 and change.max() > 0
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    # The attack moved the input along the loss gradient: the loss went up.
    before = sum(v.item() for v in detector.compute_losses(x, labels).values())
    after = sum(v.item() for v in detector.compute_losses(adversarial, labels).values())
    assert after > before


def test_box_region_learns_the_box_at_the_cells_around_the_centre():
    """With a box region, a cell next to the centre that decodes the exact box costs nothing
    and one that decodes a wrong box costs; at the centre cell alone (region 0) the neighbour
    is not judged at all."""
    from secmlops.models.compact_centernet import centernet_losses

    heatmap = torch.zeros(1, 1, 24, 32)
    target = [{"boxes": torch.tensor([[40.0, 20.0, 56.0, 68.0]])}]  # centre cell (12, 11)

    def losses(neighbour_size: float, region: float) -> tuple[float, float]:
        size = torch.zeros(1, 2, 24, 32)
        size[0, :] = torch.tensor([16 / 4, 48 / 4]).log().view(2, 1, 1)  # exact everywhere
        offset = torch.zeros(1, 2, 24, 32)
        ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
        offset[0, 0], offset[0, 1] = 12.0 - xs, 11.0 - ys  # every cell points at the centre
        size[0, :, 12, 12] += neighbour_size  # the cell below the centre misjudges the size
        result = centernet_losses(heatmap, size, offset, target, 4, box_region=region)
        return float(result["loss_size"]), float(result["loss_offset"])

    assert losses(0.0, 0.5) == pytest.approx((0.0, 0.0), abs=1e-5)
    assert losses(0.5, 0.5)[0] > 0.01
    assert losses(0.5, 0.0)[0] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ModelError, match="box_region"):
        models.build("compact_centernet", input_size=SIZE, box_region=1.5)


def test_box_samples_keep_each_centre_cell_for_its_own_person():
    """A tall person whose centre lies inside a small person's region still learns its own box
    at its centre cell (where its detection is decoded); other shared cells go to the smaller."""
    from secmlops.models.compact_centernet import _box_samples

    tall = [10.0, 2.0, 14.0, 22.0]  # cell units: centre (12, 12), 4 x 20
    small = [11.0, 11.0, 14.0, 16.0]  # centre (12.5, 13.5): cell (12, 13); covers (12, 12)
    boxes = torch.tensor([tall, small])
    centre, wh = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    owner, flat, weight = _box_samples(centre, wh, torch.tensor([0, 0]), 1, 24, 32, 0.54, 4)
    cells = {(int(o), int(f) % 32, int(f) // 32) for o, f in zip(owner, flat, strict=True)}
    assert (0, 12, 12) in cells and (1, 12, 12) not in cells  # the tall one's centre
    assert (1, 12, 13) in cells and (1, 12, 14) in cells  # the small one's centre and region
    assert (0, 12, 13) not in cells and (0, 12, 14) not in cells  # shared: the smaller's
    assert torch.all(weight > 0) and len({c[1:] for c in cells}) == len(cells)  # one owner each
