"""`evaluate`: FID/KID, the segmentation score, LPIPS, closeness to a reference and flicker.

Every network here has random or hand-made weights saved to files in the test's folder (no
download is possible or wanted): a randomly initialised FID Inception (evaluate.random_weights),
a randomly initialised LPIPS AlexNet, a random DeepLabV3, and TorchScript/ONNX segmenters whose
"weights" are a formula that reads the class from the image's red channel. The figures they give
test the arithmetic and the plumbing, not the standard networks' values.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageFilter

from p2phd_infer.cli import main
from p2phd_infer.errors import InputError, OptionError
from p2phd_infer.evaluate import (EvalOptions, Lpips, against, diversity, evaluate, fid_kid,
                                  InceptionFeatures, open_segmenter, random_weights,
                                  segmentation_score, temporal)
from p2phd_infer.labels import CITYSCAPES_TRAIN_IDS
from p2phd_infer.synthesizer import psnr

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 64, 128
STEP = 12                      # the test segmenters read class k from red level k * STEP


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("inception") / "inception_random.pth", seed=0)


@pytest.fixture(scope="module")
def inception(inception_file):
    """The first pool (64 features): the 2048-wide FID's eigendecomposition takes ~3 s a time on
    one core; the CLI test runs the 2048 one once."""
    return InceptionFeatures(inception_file, download=False, features=64)


def photos(n: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random colour fields with some edges: images an Inception can tell apart."""
    g = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = g.integers(0, 256, (4, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC))
        img = img.copy()
        y, x = g.integers(0, H - 16), g.integers(0, W - 16)
        img[y:y + 16, x:x + 16] = g.integers(0, 256, 3)
        out.append(img)
    return out


def noisy(images, sigma: float, seed: int = 1):
    g = np.random.default_rng(seed)
    return [np.clip(x + g.normal(0, sigma, x.shape), 0, 255).astype(np.uint8) for x in images]


def blurred(images, radius: float):
    return [np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(radius)))
            for x in images]


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise_and_blur(inception):
    reals = photos(5)
    f_real = inception(reals)
    assert f_real.shape == (5, 64)
    same = fid_kid(f_real, f_real.clone(), subsets=4)
    noise = [fid_kid(inception(noisy(reals, s)), f_real, subsets=4) for s in (8, 32, 96)]
    blur = [fid_kid(inception(blurred(reals, r)), f_real, subsets=4)["fid"] for r in (1, 4)]
    assert abs(same["fid"]) <= 1e-6 * noise[-1]["fid"], (same["fid"], noise)
    # KID's unbiased estimate of a set against itself is slightly negative (the diagonal of the
    # cross term is left in), and small beside a real difference.
    assert abs(same["kid"]["mean"]) < noise[-1]["kid"]["mean"]
    noise = [n["fid"] for n in noise]
    assert noise[0] < noise[1] < noise[2], noise
    assert 0 < blur[0] < blur[1], blur


def test_fid_and_kid_equal_torch_fidelitys_functional_api_on_the_same_features():
    """torchmetrics (what the project calls) against torch-fidelity's numpy functions, which
    compute the same statistics independently; features are random here."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 64, generator=g, dtype=torch.float64)
    b = torch.randn(30, 64, generator=g, dtype=torch.float64) * 1.3 + 0.2
    ours = fid_kid(a, b, subsets=1, subset_size=30)
    ref = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b),
                                   verbose=False)["frechet_inception_distance"]
    assert ours["fid"] == pytest.approx(ref, rel=1e-6)
    # One subset of every image of the smaller set: the subsets' draw cannot differ... except in
    # which 30 of a's 40 are taken, so compare on equal-size sets.
    ours = fid_kid(a[:30], b, subsets=1, subset_size=30)["kid"]
    ref = kid_features_to_metric(a[:30], b, kid_subsets=1, kid_subset_size=30, kid_degree=3,
                                 kid_gamma=None, kid_coef0=1, kid_kernel="poly", rng_seed=0,
                                 verbose=False)
    assert ours["mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert ours["std"] == 0 and ours["subset_size"] == 30


def test_too_few_images_for_fid_say_how_many():
    f = torch.zeros(1, 8, dtype=torch.float64)
    with pytest.raises(InputError, match="at least 2 images"):
        fid_kid(f, torch.zeros(5, 8, dtype=torch.float64))
    with pytest.raises(InputError, match="needs at least 10 images"):
        fid_kid(torch.zeros(4, 8).double(), torch.zeros(5, 8).double(), subset_size=10)


# --- segmentation -----------------------------------------------------------------------------


class ReadRed(torch.nn.Module):
    """Logits that make class round(red / STEP) win: a segmenter that is right exactly when the
    image's red level encodes its class."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("k", torch.arange(n, dtype=torch.float32).view(1, -1, 1, 1))
        self.scale = 255.0 / STEP

    def forward(self, x):
        r = x[:, :1] * self.scale
        return -(r - self.k) ** 2


def label_map() -> np.ndarray:
    """Cityscapes label ids: road, car, sky, building, and unlabeled (id 0, trainId 255)."""
    lab = np.zeros((H, W), np.int32)
    lab[0:16], lab[16:32], lab[32:48], lab[48:56] = 7, 26, 23, 11
    return lab


def image_for(label: np.ndarray, train_of=lambda t: t, seed: int = 0) -> np.ndarray:
    """Red = trainId * STEP on scored pixels, noise on ignored ones."""
    g = np.random.default_rng(seed)
    img = g.integers(0, 256, (H, W, 3), dtype=np.uint8)
    for label_id, t in CITYSCAPES_TRAIN_IDS.items():
        img[label == label_id, 0] = train_of(t) * STEP
    return img


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "read_red.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # torch.jit is deprecated, its files still load
        torch.jit.script(ReadRed(19)).save(str(path))
    return path


def test_a_segmenter_that_recovers_the_labels_scores_one_and_ignores_255(scripted):
    seg = open_segmenter(scripted)
    assert seg.classes.kind == "cityscapes" and seg.n_out == 19
    lab = label_map()
    r = segmentation_score(seg, [("a", image_for(lab), lab), ("b", image_for(lab, seed=1), lab)])
    assert r["pixel_accuracy"] == 1 and r["mean_iou"] == 1 and r["mean_class_accuracy"] == 1
    assert r["scored_pixels"] == 2 * 56 * W          # the unlabeled rows are left out
    assert r["classes_present"] == 4
    assert r["per_class"]["car"] == {"iou": 1.0, "accuracy": 1.0, "pixels": 2 * 16 * W}
    assert r["per_class"]["bus"]["iou"] is None      # absent from labels and predictions


def test_a_known_permutation_gives_the_known_scores(scripted):
    """Car (trainId 13) and sky (10) swapped: those 32 of 56 scored rows are wrong, both classes'
    IoU and accuracy are 0, road and building stay 1."""
    seg = open_segmenter(scripted)
    swap = {13: 10, 10: 13}
    lab = label_map()
    r = segmentation_score(seg, [("a", image_for(lab, lambda t: swap.get(t, t)), lab)])
    assert r["pixel_accuracy"] == pytest.approx(24 / 56)
    assert r["mean_iou"] == pytest.approx(0.5) and r["mean_class_accuracy"] == pytest.approx(0.5)
    assert r["per_class"]["car"]["iou"] == 0 and r["per_class"]["road"]["iou"] == 1


def test_an_onnx_segmenter_and_a_sidecar_give_the_same_scores(tmp_path):
    path = tmp_path / "read_red.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ReadRed(4), torch.zeros(1, 3, H, W), str(path), dynamo=False,
                          input_names=["rgb"], output_names=["logits"],
                          dynamic_axes={"rgb": {2: "h", 3: "w"}, "logits": {2: "h", 3: "w"}})
    # 4 channels: the model's own label names, in the segmenter's channel order.
    (tmp_path / "read_red.onnx.json").write_text(json.dumps(
        {"classes": ["road", "car", "sky", "building"]}))
    seg = open_segmenter(path)
    lab = label_map()
    img = np.zeros((H, W, 3), np.uint8)
    for k, i in enumerate((7, 26, 23, 11)):
        img[lab == i, 0] = k * STEP
    r = segmentation_score(seg, [("a", img, lab)])
    assert seg.classes.kind == "names" and r["mean_iou"] == 1 and r["scored_pixels"] == 56 * W


def test_a_segmenter_whose_classes_do_not_match_is_refused(tmp_path, scripted):
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    torch.save(net.state_dict(), tmp_path / "deeplab5.pth")
    with pytest.raises(InputError, match="outputs 5 classes, which is neither the 19"):
        open_segmenter(tmp_path / "deeplab5.pth", "deeplabv3_mobilenet_v3_large")
    with pytest.raises(InputError, match="outputs 5 classes; the model's label table has 35"):
        open_segmenter(tmp_path / "deeplab5.pth", "deeplabv3_mobilenet_v3_large",
                       classes="labels", label_nc=35)
    seg = open_segmenter(tmp_path / "deeplab5.pth", "deeplabv3_mobilenet_v3_large",
                         classes="road,car,sky,building,person")
    assert seg.predict(np.zeros((H, W, 3), np.uint8)).shape == (H, W)
    with pytest.raises(InputError, match="not a TorchScript file"):
        open_segmenter(tmp_path / "deeplab5.pth")
    with pytest.raises(InputError, match="class 'lorry' is not in the label table"):
        open_segmenter(scripted, classes=",".join(["lorry"] * 19))


# --- fidelity, flicker, diversity -------------------------------------------------------------


def test_against_a_reference_psnr_ssim_and_max_difference():
    a = photos(2)
    b = [x.copy() for x in a]
    b[1][3, 4, 0] = 255 - b[1][3, 4, 0]
    r = against([("0", a[0], b[0]), ("1", a[1], b[1])])
    assert r["images"][0]["psnr_db"] is None and r["images"][0]["max_diff"] == 0    # identical
    assert r["images"][0]["ssim"] == pytest.approx(1.0)
    one = psnr(torch.from_numpy(a[1]), torch.from_numpy(b[1]), peak=255.0)
    assert r["images"][1]["psnr_db"] == pytest.approx(one, abs=1e-3)
    assert r["overall"]["psnr_db"] == pytest.approx(one + 10 * np.log10(2), abs=1e-3)
    assert r["overall"]["max_diff"] == abs(255 - 2 * int(a[1][3, 4, 0]))
    with pytest.raises(InputError, match="its reference"):
        against([("x", a[0], a[0][:32])])


def test_temporal_figure_is_zero_on_a_static_sequence_and_counts_only_unchanged_labels():
    img, lab = photos(1)[0], label_map()
    still = temporal([("s", str(i), img, lab, None) for i in range(4)])
    assert still["mean_abs_change"] == 0 and still["frame_pairs"] == 3
    brighter = np.clip(img.astype(int) + 5, 0, 255).astype(np.uint8)
    moved = lab.copy()
    moved[0:16] = 26                                   # the road rows change label: left out
    brighter[0:16] = 0
    r = temporal([("s", "0", img, lab, None), ("s", "1", brighter, moved, None)])
    keep = img[16:].astype(int)
    assert r["mean_abs_change"] == pytest.approx(
        np.abs(np.clip(keep + 5, 0, 255) - keep).mean())
    # frames of two sequences are never compared with each other
    assert temporal([("a", "0", img, lab, None), ("b", "0", brighter, lab, None)])[
        "frame_pairs"] == 0


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    import lpips
    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        net = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False)
        for lin in net.lins:              # trained heads are non-negative (lpips clamps them)
            lin.model[-1].weight.data.abs_()
    path = tmp_path_factory.mktemp("lpips") / "lpips_random.pth"
    torch.save(net.state_dict(), path)
    return path


def test_lpips_of_identical_images_is_zero(lpips_file):
    lp = Lpips(lpips_file)
    a, b = photos(2)
    assert lp(a, a) == 0
    assert lp(a, b) > 0
    assert diversity(lp, [("m", [a, a.copy(), a.copy()])])["mean_lpips"] == 0
    two = diversity(lp, [("m", [a, b])])
    assert two["pairs"] == 1 and two["mean_lpips"] == pytest.approx(lp(a, b))


# --- the command ------------------------------------------------------------------------------


def write_set(folder, images, names):
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images, names):
        Image.fromarray(img).save(folder / f"{name}.png")


@pytest.fixture
def dataset(tmp_path):
    names = [f"f{i}" for i in range(3)]
    lab = label_map()
    for i, name in enumerate(names):
        (tmp_path / "labels").mkdir(exist_ok=True)
        Image.fromarray(lab.astype(np.uint8)).save(tmp_path / "labels" / f"{name}.png")
    write_set(tmp_path / "fake", [image_for(lab, seed=i) for i in range(3)], names)
    write_set(tmp_path / "real", [image_for(lab, seed=10 + i) for i in range(3)], names)
    return tmp_path


def test_evaluate_command_writes_the_report(dataset, scripted, inception_file):
    out = dataset / "report.json"
    md = dataset / "report.md"
    r = CliRunner().invoke(main, [
        "evaluate", "--fake", str(dataset / "fake"), "--real", str(dataset / "real"),
        "--labels", str(dataset / "labels"), "--segmenter", str(scripted),
        "--inception-weights", str(inception_file), "--kid-subsets", "5",
        "--against", str(dataset / "fake"), "--temporal", "--out", str(out),
        "--markdown", str(md), "--quiet"])
    assert r.exit_code == 0, r.output
    assert torch.is_grad_enabled()      # autograd is off inside evaluate only, not in its caller
    rep = json.loads(out.read_text())
    seg = rep["segmentation"]["rows"]
    assert seg["synthesized"]["mean_iou"] == 1 and seg["real (upper bound)"]["mean_iou"] == 1
    assert rep["fid"]["fake_images"] == 3 and rep["kid"]["subset_size"] == 2
    assert rep["fid"]["inception"]["standard"] is False
    assert "clean-fid" in rep["fid"]["inception"]["resize"]
    assert rep["against"]["overall"]["max_diff"] == 0
    assert rep["temporal"]["synthesized"]["frame_pairs"] == 2
    assert rep["temporal"]["inputs"]["frame_pairs"] == 2
    assert "| synthesized | 1.0000 | 1.0000 | 1.0000 | 3 |" in md.read_text()


def errors(args) -> str:
    r = CliRunner().invoke(main, ["evaluate", "--quiet", *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    return lines[0]


def test_bad_inputs_are_one_line_errors(dataset, scripted, tmp_path, monkeypatch):
    d = dataset
    base = ["--fake", str(d / "fake"), "--out", str(tmp_path / "r.json")]
    (d / "labels" / "f1.png").unlink()
    assert "has no partner in --labels" in errors([*base, "--labels", str(d / "labels"),
                                                   "--segmenter", str(scripted)])
    Image.fromarray(label_map()[:32].astype(np.uint8)).save(d / "labels" / "f1.png")
    assert "its label map 128x32" in errors([*base, "--labels", str(d / "labels"),
                                             "--segmenter", str(scripted)])
    one = d / "one"
    write_set(one, photos(1), ["f0"])
    assert "at least 2 images" in errors([*base, "--real", str(one)])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    line = errors([*base, "--real", str(d / "real"), "--no-download"])
    assert "--inception-weights" in line and "give --inception-weights FILE" in line
    import fractions
    torch.save({"w": fractions.Fraction(1, 3)}, tmp_path / "evil.pth")   # a pickled class
    assert "refused" in errors([*base, "--real", str(d / "real"),
                                "--inception-weights", str(tmp_path / "evil.pth")])
    (tmp_path / "noise.pth").write_bytes(b"\x00" * 64)
    assert "noise.pth" in errors([*base, "--real", str(d / "real"),
                                  "--inception-weights", str(tmp_path / "noise.pth")])
    assert "no such folder (--fake)" in errors(["--fake", str(d / "nope"), "--out", "x.json"])
    assert "needs --labels" in errors([*base, "--temporal"])


def test_styles_diversity_through_a_features_model(tmp_path, dataset, lpips_file):
    """A random features model (tiny config, dictionary of random centres) renders 3 styles of
    each map; its cars take different clusters per seed, so LPIPS is above 0."""
    from p2phd_infer.config import ModelConfig
    from helpers import save_random_model
    cfg = ModelConfig(label_nc=35, feat_num=3, netG="global", ngf=4, n_downsample_global=2,
                      n_blocks_global=1, nef=4, n_downsample_E=2)
    g = torch.Generator().manual_seed(0)
    feats = {26: torch.randn(6, 3, generator=g) * 3, 7: torch.randn(4, 3, generator=g) * 3}
    model = save_random_model(tmp_path / "m.pt", cfg, features=feats, std=0.2)
    rep = evaluate(EvalOptions(fake=str(dataset / "fake"), labels=str(dataset / "labels"),
                               styles=3, engine=str(model), device="cpu", mode="plain",
                               lpips_weights=str(lpips_file), progress=False))
    d = rep["diversity"]
    assert d["styles"] == 3 and d["pairs"] == 3 * 3 and d["mean_lpips"] > 0
    with pytest.raises(OptionError, match="2..64"):
        EvalOptions(fake="x", labels="y", styles=1)


def test_quality_benchmark_writes_its_table(tmp_path, scripted):
    """benchmarks/quality.py on 2 tiny scenes with a random-weight model (tiny config), PyTorch
    rows only (the ONNX and OpenVINO rows convert the model: minutes on 2 cores)."""
    import importlib.util
    from pathlib import Path
    from p2phd_infer.config import ModelConfig
    from p2phd_infer.train.scenes import make_scenes
    from helpers import save_random_model
    spec = importlib.util.spec_from_file_location(
        "quality_bench", Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = ModelConfig(label_nc=35, netG="global", ngf=4, n_downsample_global=2, n_blocks_global=1)
    model = save_random_model(tmp_path / "m.pt", cfg, std=0.2)
    make_scenes(tmp_path / "scenes", 2, 128, 64, seed=3, phase="test")
    r = CliRunner().invoke(bench.main, [
        "--model", str(model), "--scenes", str(tmp_path / "scenes"), "--engines", "fp32,bf16",
        "--segmenter", str(scripted), "--reps", "1", "--out-dir", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "out" / "quality_cpu_128x64.json").read_text())
    ref, bf16 = data["rows"]
    assert ref["psnr_db"] is None and ref["max_diff"] == 0 and ref["mean_iou_delta"] == 0
    assert bf16["engine"].startswith("PyTorch bf16") and bf16["ms_per_frame"] > 0
    assert bf16["psnr_db"] is None or bf16["psnr_db"] > 20
    assert "| PyTorch bf16" in (tmp_path / "out" / "quality_cpu_128x64.md").read_text()


def test_names_pair_across_cityscapes_and_pix2pixhd_suffixes():
    from p2phd_infer.evaluate import key_of
    assert key_of("aachen/aachen_000000_000019_leftImg8bit.png") == \
        key_of("aachen/aachen_000000_000019_gtFine_labelIds.png") == \
        "aachen/aachen_000000_000019"
    assert key_of("0001_synthesized_image.jpg") == key_of("0001.png") == "0001"


def test_the_inceptions_own_resize_is_the_identity_after_the_clean_resize(inception):
    """The report says the network's internal 299x299 resize changes nothing once the images
    are resized the clean-fid way: checked on the library's own resize, as it runs."""
    from p2phd_infer.evaluate.fid import clean_resize
    x = torch.from_numpy(clean_resize(photos(1)[0])).permute(2, 0, 1)[None].float()
    assert x.shape == (1, 3, 299, 299)
    y = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear",
                                        align_corners=False,
                                        antialias=inception.net.use_antialias)
    assert torch.equal(x, y)
