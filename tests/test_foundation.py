"""Foundation: networks in the official layout, label encoding, official import, `run` on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.checkpoint import CheckpointError, load_checkpoint
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.image_io import read_id_png
from p2phd_infer.labels import edge_map, encode_labels, label_from_instance, one_hot
from p2phd_infer.networks import build_encoder, build_generator
from p2phd_infer.official import import_official, infer_generator_config

TINY = dict(ngf=4, n_downsample_global=2, n_blocks_global=1, n_blocks_local=1)
# What `run` does with the frames is the point here, not which engine runs a model.pt: PyTorch,
# not the CPU default's OpenVINO conversion (seconds a run; tests/test_engine_choice.py and
# tests/test_engine_openvino.py test that).
TORCH = ("--backend", "torch")


def official_state(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in NVIDIA's layout, built without running 183 M parameters of init."""
    with torch.device("meta"):
        net = build_generator(cfg)
    g = torch.Generator().manual_seed(seed)
    # normal_ in place: one pass over 183 M floats, no temporary (randn * 0.05 makes two)
    return {k: torch.empty(v.shape).normal_(0, 0.05, generator=g)
            for k, v in net.state_dict().items()}


def write_pair(root, name, label, inst=None, label_dir="test_label", inst_dir="test_inst"):
    (root / label_dir).mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8)).save(root / label_dir / f"{name}.png")
    if inst is not None:
        (root / inst_dir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(inst.astype(np.uint16)).save(root / inst_dir / f"{name}.png")


def random_scene(rng, h, w, label_nc):
    label = rng.integers(0, label_nc, (h // 4, w // 4)).repeat(4, 0).repeat(4, 1)
    inst = (label * 1000 + rng.integers(0, 3, label.shape)).astype(np.int64)
    inst = np.where(label < 24, label, inst)
    return label, inst


def run_cli(args):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, res.output


# ---------------------------------------------------------------- networks and official layout

def test_official_1024p_shape_key_layout():
    with torch.device("meta"):
        g = build_generator(ModelConfig())            # local, ngf 32, 36 inputs
        e = build_encoder(ModelConfig(feat_num=3))
    sd = g.state_dict()
    assert len(sd) == 74
    assert sum(v.numel() for v in sd.values()) == 182_857_059
    assert sum(p.numel() for p in e.parameters()) == 788_803
    expect = {"model.1.weight": (64, 36, 7, 7), "model.13.weight": (1024, 512, 3, 3),
              "model.24.conv_block.5.weight": (1024, 1024, 3, 3), "model.25.weight": (1024, 512, 3, 3),
              "model.34.weight": (128, 64, 3, 3), "model1_1.1.weight": (32, 36, 7, 7),
              "model1_1.4.weight": (64, 32, 3, 3), "model1_2.2.conv_block.1.weight": (64, 64, 3, 3),
              "model1_2.3.weight": (64, 32, 3, 3), "model1_2.7.weight": (3, 32, 7, 7)}
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert sorted({int(k.split(".")[1]) for k in e.state_dict()}) == [1, 4, 7, 10, 13, 16, 19, 22, 25, 29]


def test_local_enhancer_forward_matches_paper_composition():
    cfg = ModelConfig(label_nc=5, **TINY)
    torch.manual_seed(0)
    g = build_generator(cfg).eval()
    x = torch.randn(2, cfg.input_nc, 32, 64)
    pooled = torch.nn.functional.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    want = g.model1_2(g.model1_1(x) + g.model(pooled))
    assert torch.equal(g(x), want)
    assert g(x).shape == (2, 3, 32, 64)
    assert g(x).abs().max() <= 1


@pytest.mark.parametrize("cfg", [
    ModelConfig(label_nc=35, **TINY),
    ModelConfig(label_nc=35, netG="global", **TINY),
    ModelConfig(label_nc=10, use_instance=False, feat_num=3, n_local_enhancers=2, ngf=2,
                n_downsample_global=3, n_blocks_global=2, n_blocks_local=2),
    ModelConfig(label_nc=20, feat_num=5, netG="global", ngf=8, n_downsample_global=1, n_blocks_global=3),
])
def test_architecture_inference(cfg):
    state = official_state(cfg)
    got = infer_generator_config(state, cfg.label_nc, cfg.use_instance)
    assert got.to_dict() == {**cfg.to_dict(), "n_blocks_local": got.n_blocks_local if
                             cfg.netG == "global" else cfg.n_blocks_local,
                             "n_local_enhancers": got.n_local_enhancers if cfg.netG == "global"
                             else cfg.n_local_enhancers}
    assert got.input_nc == cfg.input_nc and got.stride == cfg.stride


def test_official_shapes_import_and_run_through_cli(tmp_path):
    """Full-size official layouts (1024p local: ngf 32, 36 inputs; 512p global: ngf 64), random
    weights saved as plain state dicts, imported and run at a small size."""
    rng = np.random.default_rng(0)
    label, inst = random_scene(rng, 64, 64, 35)
    write_pair(tmp_path, "a", label, inst)
    for name, cfg in [("local", ModelConfig()), ("global", ModelConfig(netG="global", ngf=64))]:
        state = official_state(cfg)
        state["model.2.running_mean"] = torch.zeros(1)      # stale buffer from old PyTorch
        torch.save(state, tmp_path / f"{name}_G.pth")
        del state
        code, out = run_cli(["import-official", "--generator", tmp_path / f"{name}_G.pth",
                             "--out", tmp_path / f"{name}.pt"])
        assert code == 0, out
        ckpt = load_checkpoint(tmp_path / f"{name}.pt")
        assert ckpt.config == cfg
        assert "model.2.running_mean" not in ckpt.generator
        # --mode plain: one 64x64 frame does not repay an OpenVINO conversion of 183 M weights
        # (the CPU default, tests/test_engine_openvino.py), which would take ~1 min here.
        code, out = run_cli(["run", tmp_path / "test_label", "--engine", tmp_path / f"{name}.pt",
                             "--out", tmp_path / f"out_{name}", "--device", "cpu",
                             "--mode", "plain"])
        assert code == 0, out
        img = np.asarray(Image.open(tmp_path / f"out_{name}" / "a.png"))
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        (tmp_path / f"{name}.pt").unlink()


def test_import_refuses_misfit_naming_key_and_shapes(tmp_path):
    cfg = ModelConfig(label_nc=35, **TINY)
    state = official_state(cfg)
    state["model1_2.0.conv_block.5.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save(state, tmp_path / "G.pth")
    code, out = run_cli(["import-official", "--generator", tmp_path / "G.pth", "--out", tmp_path / "m.pt"])
    assert code != 0
    assert "model1_2.0.conv_block.5.weight" in out and "(8, 8, 1, 1)" in out and "(8, 8, 3, 3)" in out
    assert not (tmp_path / "m.pt").exists()
    # Fewer input channels than label_nc + edge: names the key and the count.
    torch.save(official_state(ModelConfig(label_nc=10, **TINY)), tmp_path / "G10.pth")
    with pytest.raises(CheckpointError, match="model.1.weight takes 11 input channels"):
        import_official(tmp_path / "G10.pth", label_nc=35)
    # Encoder whose feature width disagrees with the generator's extra input channels.
    cfg_f = ModelConfig(label_nc=35, feat_num=3, **TINY)
    torch.save(official_state(cfg_f), tmp_path / "Gf.pth")
    with torch.device("meta"):
        enc = build_encoder(ModelConfig(feat_num=4, nef=4, n_downsample_E=2))
    torch.save({k: torch.zeros(v.shape) for k, v in enc.state_dict().items()}, tmp_path / "E.pth")
    with pytest.raises(CheckpointError, match="4 feature channels, the generator takes 3"):
        import_official(tmp_path / "Gf.pth", tmp_path / "E.pth", label_nc=35)


def test_import_with_encoder_reads_feat_num_and_nef(tmp_path):
    cfg = ModelConfig(label_nc=35, feat_num=3, nef=4, n_downsample_E=2, **TINY)
    torch.save(official_state(cfg), tmp_path / "G.pth")
    with torch.device("meta"):
        enc = build_encoder(cfg)
    torch.save({k: torch.zeros(v.shape) for k, v in enc.state_dict().items()}, tmp_path / "E.pth")
    ckpt = import_official(tmp_path / "G.pth", tmp_path / "E.pth")
    assert ckpt.config == cfg and ckpt.encoder is not None


def test_checkpoint_loads_weights_only_and_checks_format(tmp_path):
    torch.save({"format": "something-else"}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a p2phd-infer checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


# ---------------------------------------------------------------- label encoding

def edge_reference(inst: np.ndarray) -> np.ndarray:
    h, w = inst.shape
    e = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and inst[yy, xx] != inst[y, x]:
                    e[y, x] = True
    return e


def test_edge_map_and_one_hot_against_plain_reference():
    rng = np.random.default_rng(1)
    for _ in range(3):
        inst = rng.integers(0, 4, (2, 1, 13, 17)) * 1000 + 26000
        got = edge_map(torch.from_numpy(inst).int()).numpy()
        for b in range(2):
            assert np.array_equal(got[b, 0], edge_reference(inst[b, 0]))
        label = rng.integers(0, 7, (2, 1, 13, 17))
        oh = one_hot(torch.from_numpy(label).int(), 7).numpy()
        ref = np.zeros((2, 7, 13, 17), np.float32)
        for b in range(2):
            for y in range(13):
                for x in range(17):
                    ref[b, label[b, 0, y, x], y, x] = 1
        assert np.array_equal(oh, ref)
    for shape in [(1, 1, 1, 6), (1, 1, 6, 1), (1, 1, 1, 1)]:       # thin maps keep their shape
        thin = rng.integers(0, 3, shape)
        assert np.array_equal(edge_map(torch.from_numpy(thin))[0, 0].numpy(), edge_reference(thin[0, 0]))
    x = encode_labels(torch.from_numpy(label).int(), torch.from_numpy(inst).int(), 7, True,
                      torch.ones(2, 2, 13, 17), torch.float16)
    assert x.shape == (2, 10, 13, 17) and x.dtype == torch.float16
    assert torch.equal(x[:, 7:8].bool(), edge_map(torch.from_numpy(inst)))


def test_touching_cars_keep_every_id_and_boundary(tmp_path):
    """26001..26007 and 33001: fp16 would merge the cars (all become 26000); int32 keeps them."""
    inst = np.full((16, 40), 7, np.int64)                   # road
    for k in range(7):
        inst[4:12, 4 + 4 * k: 8 + 4 * k] = 26001 + k        # seven touching cars
    inst[4:12, 32:36] = 33001                               # a bicycle touching the last car
    Image.fromarray(inst.astype(np.uint16)).save(tmp_path / "inst.png")
    decoded = read_id_png(tmp_path / "inst.png")
    assert decoded.dtype == np.int32
    assert set(np.unique(decoded)) == {7, *range(26001, 26008), 33001}
    edges = edge_map(torch.from_numpy(decoded)[None, None])[0, 0].numpy()
    assert np.array_equal(edges, edge_reference(decoded))
    for k in range(7):                                       # both sides of each car-car boundary
        x = 8 + 4 * k
        assert edges[4:12, x - 1].all() and edges[4:12, x].all()
    assert torch.unique(torch.from_numpy(decoded).half()).numel() < 9   # what fp16 would do
    labels = label_from_instance(torch.from_numpy(decoded))
    assert set(labels.unique().tolist()) == {7, 26, 33}


# ---------------------------------------------------------------- run

@pytest.fixture
def tiny_model(tmp_path):
    cfg = ModelConfig(label_nc=8, **TINY)                    # stride 8
    torch.save(official_state(cfg, seed=3), tmp_path / "G.pth")
    code, out = run_cli(["import-official", "--generator", tmp_path / "G.pth", "--label-nc", 8,
                         "--out", tmp_path / "model.pt"])
    assert code == 0, out
    return tmp_path / "model.pt"


def test_run_batch_sizes_give_identical_images(tmp_path, tiny_model):
    rng = np.random.default_rng(2)
    for i in range(5):
        write_pair(tmp_path / "d", f"f{i}", *random_scene(rng, 32, 48, 8))
    outs = {}
    for bs in (1, 3):
        code, out = run_cli(["run", tmp_path / "d" / "test_label", "--engine", tiny_model,
                             "--out", tmp_path / f"o{bs}", "--batch-size", bs, "--device", "cpu",
                             *TORCH])
        assert code == 0, out
        outs[bs] = [np.asarray(Image.open(tmp_path / f"o{bs}" / f"f{i}.png")) for i in range(5)]
    for a, b in zip(outs[1], outs[3]):
        assert np.array_equal(a, b)
    assert not np.array_equal(outs[1][0], outs[1][1])


def test_run_pairs_cityscapes_names_and_instances_folder(tmp_path, tiny_model):
    rng = np.random.default_rng(3)
    label, inst = random_scene(rng, 32, 32, 8)
    city = tmp_path / "gtFine" / "val" / "aachen"
    city.mkdir(parents=True)
    Image.fromarray(label.astype(np.uint8)).save(city / "aachen_000000_000019_gtFine_labelIds.png")
    Image.fromarray(inst.astype(np.uint16)).save(city / "aachen_000000_000019_gtFine_instanceIds.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(city / "aachen_000000_000019_gtFine_color.png")
    code, out = run_cli(["run", tmp_path / "gtFine", "--engine", tiny_model, "--out", tmp_path / "o",
                         *TORCH])
    assert code == 0, out
    written = sorted(p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.png"))
    assert written == ["val/aachen/aachen_000000_000019_gtFine_labelIds.png"]
    # --instances: same file names in another folder.
    write_pair(tmp_path / "p", "x", label, inst, label_dir="labels", inst_dir="insts")
    code, out = run_cli(["run", tmp_path / "p" / "labels", "--instances", tmp_path / "p" / "insts",
                         "--engine", tiny_model, "--out", tmp_path / "o2", *TORCH])
    assert code == 0, out
    assert (tmp_path / "o2" / "x.png").is_file()


def test_run_bad_inputs_fail_alone(tmp_path, tiny_model):
    rng = np.random.default_rng(4)
    d = tmp_path / "d"
    good = [f"good{i}" for i in range(2)]
    for g in good:
        write_pair(d, g, *random_scene(rng, 32, 32, 8))
    (d / "test_label" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_pair(d, "badsize", *random_scene(rng, 12, 32, 8))          # below the minimum 16
    label, inst = random_scene(rng, 32, 32, 8)
    write_pair(d, "mismatch", label, inst[:16])                      # instance map of other size
    bad = label.copy()
    bad[0, 0] = 9
    write_pair(d, "outofrange", bad, inst)                           # label 9 >= label_nc 8
    write_pair(d, "noinst", label)                                   # no instance map
    code, out = run_cli(["run", d / "test_label", "--engine", tiny_model, "--out", tmp_path / "o",
                         "--batch-size", 2, *TORCH])
    assert code != 0
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 5, out
    expect = {"corrupt.png": "not a readable PNG", "badsize.png": "size 32x12 is below this model's minimum 16x16",
              "mismatch.png": "instance map size 32x16 differs from the label map's 32x32", "outofrange.png": "label id 9 out of range",
              "noinst.png": "no instance map found"}
    for name, fault in expect.items():
        assert any(name in ln and fault in ln for ln in lines), (name, out)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["good0.png", "good1.png"]


def test_run_skips_existing_unless_overwrite(tmp_path, tiny_model):
    rng = np.random.default_rng(5)
    write_pair(tmp_path / "d", "a", *random_scene(rng, 32, 32, 8))
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "a.png").write_bytes(b"keep me")
    code, out = run_cli(["run", tmp_path / "d" / "test_label", "--engine", tiny_model, "--out", out_dir,
                         *TORCH])
    assert code == 0 and (out_dir / "a.png").read_bytes() == b"keep me"
    code, out = run_cli(["run", tmp_path / "d" / "test_label", "--engine", tiny_model, "--out", out_dir,
                         "--overwrite", *TORCH])
    assert code == 0 and np.asarray(Image.open(out_dir / "a.png")).shape == (32, 32, 3)
    assert [p.name for p in out_dir.iterdir()] == ["a.png"]          # no temporary files left


def test_run_missing_engine_is_one_line_error(tmp_path):
    code, out = run_cli(["run", tmp_path, "--engine", tmp_path / "nope.pt", "--out", tmp_path / "o"])
    assert code != 0 and "nope.pt: no such engine file" in out and "Traceback" not in out


def test_every_command_has_help():
    code, out = run_cli(["--help"])
    assert code == 0
    commands = [ln.split()[0] for ln in out.split("Commands:")[1].strip().splitlines()]
    assert {"run", "import-official"} <= set(commands)
    for c in commands:
        code, text = run_cli([c, "--help"])
        assert code == 0 and "Usage:" in text, c


def test_main_job_runs_with_the_bundled_demo_model(tmp_path):
    """The README's main command, through the installed console script: no LABELS, no --engine."""
    import shutil
    import subprocess
    exe = shutil.which("p2phd-infer")
    if exe is None:
        pytest.skip("the p2phd-infer console script is not installed (pip install -e .)")
    res = subprocess.run([exe, "run", "--out", str(tmp_path / "out"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) >= 1 and all(n.endswith(".png") for n in written)
    img = np.asarray(Image.open(tmp_path / "out" / written[0]))
    assert img.ndim == 3 and img.shape[2] == 3 and img.std() > 5     # a picture, not a flat fill
