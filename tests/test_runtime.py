"""How models run fast (geoloc.models.runtime, and the extractor that applies it): the
optimised extractor must give the descriptors of a plain reference forward, and the batch,
threads and precision it picks must follow the rules the docs state. No timing here: speed is
measured by benchmarks/bench_vs_loop.py and bench_index.py, which print figures."""

from __future__ import annotations

import copy
import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geoloc.errors import UsageError
from geoloc.models import runtime

ROOT = Path(__file__).resolve().parents[1]


def _plain_loop():
    """benchmarks/plain_loop.py: the reference implementation the benchmark measures against."""
    spec = importlib.util.spec_from_file_location("plain_loop", ROOT / "benchmarks" / "plain_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plain_tensor(image, preprocess) -> torch.Tensor:
    """The network input as the reference writes it: float, scaled, mean and std, NCHW."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
    x = x * (preprocess.scale / 255.0)
    mean = torch.tensor(preprocess.mean)[:, None, None]
    std = torch.tensor(preprocess.std)[:, None, None]
    return ((x - mean) / std)[None]


def _extracted(model, paths, max_side, **config):
    from geoloc.descriptors.extract import ExtractConfig, Extractor

    extractor = Extractor(model, ExtractConfig(max_side=max_side, hash_files=False, **config), "cpu")
    rows, names = [], []
    for items, desc in extractor.descriptors(paths):
        rows.append(desc)
        names += [item.path for item in items]
    return extractor, names, np.concatenate(rows)


def _assert_parity(ours: np.ndarray, reference: np.ndarray, tolerance: float = 2e-3) -> None:
    """Cosine scores of the extractor's descriptors equal the reference's within ``tolerance``,
    photo against photo and every pair's score."""
    cos = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() >= 1 - tolerance
    assert np.abs(ours @ ours.T - reference @ reference.T).max() <= tolerance


# ---------------------------------------------------------------------------------------------
# Descriptor parity on real photos


@pytest.fixture(scope="module")
def small_vgg_file(tmp_path_factory):
    """A VGG-16 NetVLAD model file converted from a checkpoint in the real Patch-NetVLAD layout
    (random weights, float64 WPCA as released; 256 whitened dimensions to stay small)."""
    from hub_fixtures import random_netvlad_weights, write_pth_tar

    from geoloc.models.weights import convert_checkpoint

    root = tmp_path_factory.mktemp("vgg")
    pth = write_pth_tar(root / "pitts_WPCA256.pth.tar", random_netvlad_weights(whiten_dim=256, seed=3))
    return convert_checkpoint(pth, root / "vgg.safetensors", base="test")


def test_vgg16_netvlad_extractor_equals_the_reference_implementation(small_vgg_file, lund_dir):
    from geoloc import photos
    from geoloc.models.registry import load_model

    paths = [lund_dir / f"{i:02d}.jpg" for i in (1, 5, 9, 13)]
    model = load_model(small_vgg_file)
    extractor, names, ours = _extracted(model, paths, 160)
    assert model.channels_last and extractor.batch_size >= 1  # the CPU's layout was applied
    reference = _plain_loop().load_reference(small_vgg_file)  # NCHW, per-cluster loop, conv WPCA
    with torch.no_grad():
        theirs = np.concatenate([
            reference(_plain_tensor(photos.load_image(p, 160), model.preprocess)).numpy() for p in names])
    _assert_parity(ours, theirs)


def test_lite0_vlad_extractor_equals_a_plain_forward(lund_dir):
    """lite0-vlad (real ImageNet weights, a vocabulary fitted on the photos): the extractor
    against the same network run plainly, one photo at a time, contiguous, fp32."""
    from geoloc import photos
    from geoloc.models.registry import load_model

    paths = [lund_dir / f"{i:02d}.jpg" for i in range(1, 9)]
    model = load_model("lite0-vlad")
    pre = model.preprocess.replace(max_side=192)
    inputs = [_plain_tensor(photos.load_image(p, 192), pre) for p in paths]
    with torch.no_grad():
        feats = torch.cat([model.backbone(x).flatten(2).transpose(1, 2).reshape(-1, 320) for x in inputs])
    model.fit_vocabulary(feats, iterations=10)
    plain = copy.deepcopy(model)
    _, names, ours = _extracted(model, paths, 192, batch_size=3)  # batches of 3, 3 and 2
    with torch.no_grad():
        theirs = np.concatenate([plain.pool(plain.backbone(x)).numpy() for x in inputs])
    assert names == paths
    _assert_parity(ours, theirs)


def test_bf16_descriptors_stay_close_to_fp32(lund_dir):
    """--precision bf16 on the CPU: the trunk in bfloat16, pooling in fp32; descriptors stay
    within a few 1e-3 of fp32 (measured figures: docs/database.md, "Precision")."""
    from geoloc.models.registry import load_model

    paths = [lund_dir / f"{i:02d}.jpg" for i in range(1, 7)]
    model = load_model("lite0-gem")
    _, _, fp32 = _extracted(model, paths, 160, precision="fp32")
    extractor, _, bf16 = _extracted(model, paths, 160, precision="bf16")
    assert extractor.precision == "bf16" and model.precision == "bf16"
    _assert_parity(bf16, fp32, tolerance=2e-2)
    assert not np.array_equal(bf16, fp32)  # it did run reduced


def test_whitening_as_a_product_equals_the_1x1_convolution():
    from geoloc.models.netvlad import Whitening

    torch.manual_seed(0)
    layer = Whitening(96, 24)
    x = torch.randn(5, 96)
    expected = F.normalize(F.conv2d(x[:, :, None, None], layer.conv.weight, layer.conv.bias).flatten(1), dim=1)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_channels_last_is_for_the_cpu_only():
    from geoloc.models.model import build_model

    with torch.device("meta"):
        model = build_model("vgg16", "netvlad", pretrained_backbone=False)
    runtime.prepare(model, "cpu")
    assert model.channels_last
    assert model.backbone[0].weight.is_contiguous(memory_format=torch.channels_last)
    runtime.prepare(model, "cuda:0", "bf16")  # no GPU needed to say what it would run
    assert not model.channels_last and model.precision == "bf16"
    assert model.backbone[0].weight.is_contiguous()


# ---------------------------------------------------------------------------------------------
# Batch


def _meta_model(arch: str):
    from geoloc.models.model import build_model

    with torch.device("meta"):  # shapes only: the probe runs on meta tensors, in no time
        return build_model(arch, "netvlad", pretrained_backbone=False)


def test_batch_follows_image_size_model_and_memory():
    vgg = _meta_model("vgg16")
    # conv1_2's input and output at 640×640: 2 × 64 channels × 4 bytes a pixel.
    assert runtime.activation_bytes(vgg, 640, 640) == 2 * 64 * 4 * 640 * 640
    assert runtime.plan_batch(vgg, 640, "cpu") == 1  # the default model at its default size
    budget = runtime.CPU_BATCH_BYTES
    at_320 = runtime.activation_bytes(vgg, 320, 320)
    assert at_320 * 4 == runtime.activation_bytes(vgg, 640, 640)
    assert runtime.plan_batch(vgg, 320, "cpu", budget=budget) == budget // at_320
    assert runtime.plan_batch(vgg, 320, "cpu", budget=2 * 2 * 64 * 4 * 320 * 320) == 2
    assert runtime.plan_batch(vgg, 320, "cpu", budget=3 * 2 * 64 * 4 * 320 * 320) == 3
    assert runtime.plan_batch(vgg, 32, "cpu", budget=budget) == runtime.MAX_BATCH["cpu"]
    assert runtime.plan_batch(vgg, 640, "cpu", budget=1) == 1  # never zero
    lite = _meta_model("lite0")
    assert runtime.plan_batch(lite, 320, "cpu") > runtime.plan_batch(vgg, 320, "cpu")


def test_batch_size_option_overrides_the_plan(tiny_model, lund_dir):
    from geoloc.models.registry import load_model

    model = load_model(tiny_model)
    model.fit_vocabulary(torch.randn(64, 16), iterations=2)
    extractor, _, _ = _extracted(model, [lund_dir / "01.jpg"], 64, batch_size=3)
    assert extractor.batch_size == 3
    planned, _, _ = _extracted(model, [lund_dir / "01.jpg"], 64)
    assert planned.batch_size == runtime.plan_batch(model, 64, "cpu")


def test_finetune_runs_the_model_as_the_extractor_does():
    """finetune gets the extractor's gain: the same layout, and its descriptor passes (cache
    refreshes, validation, PCA) the batch the extractor would plan; a given batch is kept."""
    from geoloc.training.finetune import FinetuneConfig, _run_as_the_extractor_does

    model = _meta_model("vgg16")
    config = _run_as_the_extractor_does(model, FinetuneConfig(max_side=320), torch.device("cpu"))
    assert model.channels_last and model.precision == "fp32"
    assert config.eval_batch_size == runtime.plan_batch(model, 320, "cpu")
    assert FinetuneConfig().eval_batch_size is None  # planned unless set
    kept = _run_as_the_extractor_does(_meta_model("lite0"), FinetuneConfig(eval_batch_size=5), torch.device("cpu"))
    assert kept.eval_batch_size == 5


# ---------------------------------------------------------------------------------------------
# Threads


def _feed(share, batches, per_photo: dict, decode_per_photo: float):
    """Run ``batches`` single-photo batches through ``share``, each taking what ``per_photo``
    says for the thread count in force; the thread counts used, in order."""
    used, decode, network = [], 0.0, 0.0
    for _ in range(batches):
        used.append(share.threads)
        seconds = per_photo[share.threads]
        decode += decode_per_photo
        network += seconds
        share.record(1, seconds, decode, network)
    return used


def test_cheap_decoding_leaves_the_network_every_core():
    """VGG-16 at 640 px: 20 ms of decoding per 1.25 s of network. No trial at all."""
    share = runtime.CoreShare(workers=1, cores=2)
    used = _feed(share, 20, {2: 1.25, 1: 2.1}, decode_per_photo=0.02)
    assert used == [2] * 20


def test_costly_decoding_is_measured_both_ways_and_the_faster_kept():
    """Lite0 at 320 px on 2 shared cores: 2 threads beside decoding measured 0.21 s a photo,
    1 thread 0.085 s. One warm-up batch, a second of each setting, then the faster."""
    share = runtime.CoreShare(workers=1, cores=2)
    used = _feed(share, 60, {2: 0.21, 1: 0.085}, decode_per_photo=0.02)
    assert used[0] == 2 and 1 in used[:20]
    assert set(used[30:]) == {1}
    share = runtime.CoreShare(workers=1, cores=2)  # where every core wins, it stays
    used = _feed(share, 100, {2: 0.05, 1: 0.085}, decode_per_photo=0.02)
    assert 1 in used and set(used[60:]) == {2}


def test_the_choice_is_measured_again_later():
    share = runtime.CoreShare(workers=1, cores=2)
    share.REVISIT_S = 5.0
    used = _feed(share, 200, {2: 0.21, 1: 0.085}, decode_per_photo=0.02)
    switches = sum(1 for a, b in itertools.pairwise(used) if a != b)
    assert switches >= 4  # tried again (and settled again) after the first decision


def test_threads_never_exceed_the_users_setting_nor_drop_below_one():
    assert runtime.CoreShare(workers=4, cores=16).reduced == 12
    assert runtime.CoreShare(workers=2, cores=2).reduced == 1
    share = runtime.CoreShare(workers=1, cores=8)
    assert share.set_limit(3) == 3 and share.full == 3 and share.reduced == 3
    assert set(_feed(share, 30, {3: 0.2}, decode_per_photo=0.2)) == {3}  # nothing to choose


def test_extractor_restores_the_thread_setting(tiny_model, lund_dir):
    from geoloc.models.registry import load_model

    model = load_model(tiny_model)
    model.fit_vocabulary(torch.randn(64, 16), iterations=2)
    before = torch.get_num_threads()
    _extracted(model, [lund_dir / f"{i:02d}.jpg" for i in range(1, 4)], 64, workers=1)
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------------------------------------
# Precision


def test_precision_choices():
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    assert runtime.resolve_precision(None, "cpu") == "fp32"
    assert runtime.resolve_precision("BF16", "cpu") == "bf16"
    assert runtime.resolve_precision("auto", "mps") == "fp32"
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        runtime.resolve_precision("fp16", "cpu")
    with pytest.raises(UsageError, match="unknown precision 'fp8'; choose one of auto, fp32, bf16, fp16"):
        runtime.check_precision_name("fp8")


def test_precision_option_is_checked_before_anything_is_created(tiny_model, lund_dir, tmp_path):
    from typer.testing import CliRunner

    from geoloc.cli import app

    runner = CliRunner()
    db = tmp_path / "db"
    for value, message in (("fp8", "unknown precision 'fp8'"), ("fp16", "fp16 needs a GPU")):
        result = runner.invoke(app, ["index", str(lund_dir / "01.jpg"), "--db", str(db), "--model", tiny_model,
                                     "--device", "cpu", "--precision", value])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1
        assert not db.exists()


def test_the_manifest_records_the_precision_and_queries_need_not_match(tiny_model, lund_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from geoloc.cli import app

    runner = CliRunner()
    db = tmp_path / "db"

    def index(*photos, precision="auto"):
        result = runner.invoke(app, ["index", *map(str, photos), "--db", str(db), "--model", tiny_model,
                                     "--device", "cpu", "--precision", precision, "--json", "-q"])
        assert result.exit_code == 0, result.output
        return json.loads((db / "manifest.json").read_text())["precision"]

    assert index(*(lund_dir / f"{i:02d}.jpg" for i in range(1, 8))) == "fp32"  # auto on the CPU
    assert index(lund_dir / "09.jpg", precision="fp32") == "fp32"
    assert index(lund_dir / "11.jpg", precision="bf16") == "mixed"
    result = runner.invoke(app, ["locate", str(lund_dir / "02.jpg"), "--db", str(db), "--device", "cpu",
                                 "--precision", "bf16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["estimate"] is not None
