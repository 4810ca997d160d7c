"""Shared test fixtures: where the real PETS data lives, and small datasets built once."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real footage is never committed; tests read it where the workspace keeps it.
PETS_DIR = Path(os.environ.get("SECMLOPS_PETS_DIR", REPO_ROOT.parent / "shared/data/pets09-s2l1"))

requires_pets = pytest.mark.skipif(
    not (PETS_DIR / "vtest.avi").is_file(),
    reason=f"real PETS 2009 data not found at {PETS_DIR} (set SECMLOPS_PETS_DIR)",
)

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def pytest_collection_modifyitems(config, items):
    """Slow modules first (a stable sort: order within them unchanged). Under pytest-xdist
    (`make test`) the longest work starts at once instead of being left to one worker at the
    end while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: on two cores shared with other jobs, two intra-op
    threads made training ~10x slower (they spin-wait on each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """One real key per role of the release chain, and a rogue key (tests/trust.py)."""
    from .trust import make_pki

    return make_pki(tmp_path_factory.mktemp("role-keys"))


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory) -> Path:
    """48 small synthetic scenes (160x128), generated once per test session."""
    from secmlops.data.synthetic import generate_scenes

    return generate_scenes(
        tmp_path_factory.mktemp("data") / "tiny", 48, seed=7, width=160, height=128, workers=1
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_scenes, tmp_path_factory) -> Path:
    """A compact detector trained for two short epochs on `tiny_scenes`."""
    from secmlops.training.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "tiny"
    train(tiny_scenes, out, TrainConfig(epochs=2, batch_size=8, warmup_steps=4, seed=1))
    return out


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's server), with throw-away credentials."""
    from moto.server import ThreadedMotoServer

    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "secmlops-test",
            "AWS_SECRET_ACCESS_KEY": "secmlops-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket on the loopback S3 endpoint; yields (endpoint, bucket name)."""
    import boto3

    name = "secmlops-" + request.node.name.lower().replace("_", "-")[:40]
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return s3_endpoint, name


@pytest.fixture(scope="session")
def small_scenes(tmp_path_factory) -> Path:
    """64 synthetic scenes (160x128), generated once per test session."""
    from secmlops.data.synthetic import generate_scenes

    out = tmp_path_factory.mktemp("small-data") / "scenes"
    return generate_scenes(out, 64, seed=11, width=160, height=128, workers=1)


@pytest.fixture(scope="session")
def small_model(small_scenes, tmp_path_factory) -> Path:
    """A compact detector trained until it finds people (30 epochs on `small_scenes`: clean
    mAP@0.5 ~0.48 on all of them; 0.36 at 25 epochs, 0.25 at 15): an untrained model has
    nothing to lose to attacks. Trained on one torch thread (see `one_thread`).

    Its operating point is chosen at 1 false positive per validation image: at the policy's 0.1
    this weak model keeps 3% of its 6 validation images' people (threshold 0.57), too few for a
    recall under attack to say anything; at 1.0 it keeps ~40% (threshold ~0.3)."""
    import torch

    from secmlops.training.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("small-models") / "small"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig(epochs=30, batch_size=8, warmup_steps=10, seed=1, target_fppi=1.0)
        train(small_scenes, out, config)
    finally:
        torch.set_num_threads(threads)
    return out
