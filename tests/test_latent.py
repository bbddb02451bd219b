"""Latent-space experts: a tiny randomly initialised diffusers AutoencoderKL saved to a temp dir."""

import json
import shutil

import numpy as np
import pytest
import torch

from _cli import cli
from decentdiff.cli import main
from decentdiff.errors import ConfigError
from decentdiff.latent import LatentCodec, cached_latents

diffusers = pytest.importorskip("diffusers")  # in the [test] extra; `make test` checks it imports


def make_vae(path, channels=1, seed=0):
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=8,
        scaling_factor=0.5,
        shift_factor=0.1,
    )
    vae.save_pretrained(path)
    return vae.eval()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vae") / "vae"
    make_vae(d)
    return d


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = np.zeros((40, 1, 8, 8), np.uint8)
    x[:20, :, :4] = 200
    x[20:, :, 4:] = 200
    return np.clip(x + rng.integers(0, 40, x.shape), 0, 255).astype(np.uint8)


def test_encode_and_decode_are_the_vaes_with_scale_and_shift(vae_dir, images):
    codec = LatentCodec.load(vae_dir)
    assert (codec.factor, codec.latent_channels, codec.scale, codec.shift) == (2, 4, 0.5, 0.1)
    vae = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    x = torch.from_numpy(images[:5]).float() / 127.5 - 1
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        z = codec.encode(images[:5])
        torch.testing.assert_close(z, (mean - 0.1) * 0.5, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            codec.decode(z, 1), vae.decode(mean).sample.clamp(-1, 1), rtol=1e-4, atol=1e-4
        )
    assert codec.latent_shape((1, 8, 8)) == (4, 4, 4)


def test_grey_images_through_a_three_channel_vae(tmp_path, images):
    make_vae(tmp_path / "rgb", channels=3)
    codec = LatentCodec.load(tmp_path / "rgb")
    vae = diffusers.AutoencoderKL.from_pretrained(tmp_path / "rgb").eval()
    x = torch.from_numpy(images[:3]).float() / 127.5 - 1
    with torch.no_grad():
        mean = vae.encode(x.repeat(1, 3, 1, 1)).latent_dist.mean
        torch.testing.assert_close(codec.encode(images[:3]), (mean - 0.1) * 0.5, atol=1e-5, rtol=0)
        rgb = vae.decode(mean).sample.clamp(-1, 1)
        out = codec.decode((mean - 0.1) * 0.5, 1)
    assert out.shape == (3, 1, 8, 8)
    torch.testing.assert_close(out, rgb.mean(dim=1, keepdim=True), atol=1e-4, rtol=0)


def test_the_cache_encodes_once_and_rebuilds_a_damaged_entry(
    vae_dir, images, tmp_path, monkeypatch
):
    codec = LatentCodec.load(vae_dir)
    calls = []
    encode = LatentCodec.encode
    monkeypatch.setattr(
        LatentCodec, "encode", lambda self, x: calls.append(len(x)) or encode(self, x)
    )
    z1 = cached_latents(codec, images, tmp_path)
    z2 = cached_latents(codec, images, tmp_path)
    assert calls == [40] and np.array_equal(z1, z2)
    (npy,) = tmp_path.glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:100])  # a torn write
    z3 = cached_latents(codec, images, tmp_path)
    assert calls == [40, 40] and np.array_equal(z3, z1)
    cached_latents(codec, images[:10], tmp_path)  # other images, another entry
    assert calls == [40, 40, 10] and len(list(tmp_path.glob("*.npy"))) == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_vae_and_sizes_are_one_line_errors(tmp_path, vae_dir):
    with pytest.raises(ConfigError, match=r"no config\.json"):
        LatentCodec.load(tmp_path / "nothing")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ConfigError, match="not an AutoencoderKL"):
        LatentCodec.load(tmp_path / "unet")
    codec = LatentCodec.load(vae_dir)
    with pytest.raises(ConfigError, match=r"data.size=8"):
        codec.encode(np.zeros((2, 1, 7, 7), np.uint8))


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, vae_dir, images):
    p = tmp_path_factory.mktemp("data") / "two.npz"
    np.savez(p, x=images, y=np.repeat(np.arange(2), 20))
    run = tmp_path_factory.mktemp("runs") / "latent"
    main(["partition", str(run), "--data", f"npz:{p}", "-K", "2", "--by", "label",
          "--vae", str(vae_dir)])  # fmt: skip
    common = ["--preset", "tiny", "--steps", "3", "-q"]
    main(["train", "experts", str(run), *common, "--set", "train.batch=8"])
    main(["train", "router", str(run), *common, "--batch", "8"])
    main(["train", "monolith", str(run), *common, "--flop-match"])
    return run


def test_every_network_trained_on_the_cached_latents(latent_run, vae_dir, monkeypatch):
    from decentdiff import config as C
    from decentdiff.run import Run

    r = Run(latent_run)
    assert r.read_toml()["model"]["vae"] == str(vae_dir)  # recorded once for the whole RUN
    codec = LatentCodec.load(vae_dir)
    for d in ("experts/0", "experts/1", "monolith", "router"):
        meta = json.loads((latent_run / d / "meta.json").read_text())
        assert meta["vae"]["fingerprint"] == codec.fingerprint, d
        assert meta["vae"]["pixel_shape"] == [1, 8, 8], d
        assert meta["image_shape"] == [4, 4, 4], d
    # The cache holds exactly what the VAE makes of the training images: asking for the latents
    # of the training part encodes nothing new (the monolith's and the router's entry).
    data = r.data(C.resolve(base=r.base_config()), create=False)
    monkeypatch.setattr(LatentCodec, "encode", lambda *a: pytest.fail("encoded again"))
    z = cached_latents(codec, data.images[data.train_idx], latent_run / "latents")
    monkeypatch.undo()
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(z)), codec.encode(data.images[data.train_idx])
    )


def test_samples_are_decoded_to_pixels(latent_run, capsys):
    for model, extra in (("monolith", []), ("ensemble", ["--routing", "top1"])):
        out = latent_run / f"{model}.npz"
        code, _, err = cli(capsys, "sample", latent_run, "--model", model, "--n", 5, "--sample-steps", 2,
                           "--out", out, *extra)  # fmt: skip
        assert code == 0, err
        with np.load(out) as z:
            assert z["images"].shape == (5, 1, 8, 8)  # decoded: the latents are (4, 4, 4)


def test_a_same_size_corruption_is_not_trusted(vae_dir, images, tmp_path):
    codec = LatentCodec.load(vae_dir)
    z1 = cached_latents(codec, images, tmp_path)
    (npy,) = tmp_path.glob("*.npy")
    raw = bytearray(npy.read_bytes())
    raw[-4:] = b"\x00\x00\xc0\x7f"  # the last float becomes NaN, the size stays
    npy.write_bytes(bytes(raw))
    z2 = cached_latents(codec, images, tmp_path)
    assert np.array_equal(z1, z2) and np.isfinite(z2).all()


def test_latent_epsilon_models_are_not_clipped_to_pixel_range(latent_run, capsys):
    """Latents are not in [−1, 1]: an ε-model's x̂0 must not be clamped there."""
    from decentdiff.training.generative import load_generative

    code, _, err = cli(capsys, "train", "expert", latent_run, "-k", 0, "--objective", "ddpm",
                       "--steps", 2, "--fresh", "-q")  # fmt: skip
    assert code == 0, err
    velocity = load_generative(latent_run / "experts" / "0")[0]
    assert velocity.clip_x0 is None
    code, _, err = cli(capsys, "train", "expert", latent_run, "-k", 0, "--preset", "tiny",
                       "--objective", "fm", "--steps", 3, "--set", "train.batch=8", "--fresh", "-q")  # fmt: skip
    assert code == 0, err


def test_spaces_that_do_not_match_are_refused(latent_run, vae_dir, capsys, tmp_path):
    # A pixel-space router beside latent experts: sampling refuses in one line.
    shutil.copytree(latent_run, tmp_path / "r")
    run = tmp_path / "r"
    code, _, err = cli(capsys, "train", "router", run, "--preset", "tiny", "--steps", 2,
                       "--batch", 8, "--fresh", "--vae", "", "-q")  # fmt: skip
    assert code == 0, err
    code, _, err = cli(capsys, "sample", run, "--model", "ensemble", "--routing", "top1", "--n",
                       2, "--sample-steps", 2, "--out", run / "s.npz")  # fmt: skip
    assert code == 2 and "different spaces" in err and len(err.strip().splitlines()) == 1
    # Resuming the latent monolith in pixel space is refused, not silently mixed.
    code, _, err = cli(capsys, "train", "monolith", run, "--preset", "tiny", "--steps", 5,
                       "--vae", "", "-q")  # fmt: skip
    assert code == 2 and "latent space" in err
    # Another --vae on an existing RUN, or a --vae that is not a VAE: one line, nothing written.
    code, _, err = cli(capsys, "partition", run, "-K", 2, "--by", "label", "--fresh",
                       "--vae", tmp_path)  # fmt: skip
    assert code == 2 and "latent space of a RUN is fixed" in err
    code, _, err = cli(capsys, "partition", tmp_path / "new", "-K", 2, "--data", "digits",
                       "--vae", tmp_path / "nothing")  # fmt: skip
    assert code == 2 and "no config.json" in err and not (tmp_path / "new" / "run.toml").exists()
    code, _, err = cli(capsys, "distill", run, "--arch", "dit", "--steps", 1)
    assert code == 2 and "--arch needs --preset" in err


def test_withdrawing_an_expert_deletes_the_cached_latents(latent_run, capsys, tmp_path):
    shutil.copytree(latent_run, tmp_path / "w")
    run = tmp_path / "w"
    assert list((run / "latents").glob("*.npy"))
    code, out, err = cli(capsys, "experts", "remove", run, "1", "--preset", "tiny", "--steps", 2,
                         "-q")  # fmt: skip
    assert code == 0, err
    assert "latents" in out
    # Only what the router retrained on afterwards (the remaining cluster) is cached again.
    from decentdiff.ddm.store import load_partition
    from decentdiff.run import Run

    (entry,) = (run / "latents").glob("*.json")
    sizes = load_partition(Run(run)).sizes()
    assert len(sizes) == 1 and json.loads(entry.read_text())["shape"][0] == sizes[0] == 16


def test_an_export_carries_its_vae(latent_run, vae_dir, capsys, tmp_path):
    out = tmp_path / "exp"
    code, _, err = cli(capsys, "export", latent_run, out)
    assert code == 0, err
    meta = json.loads((out / "monolith" / "meta.json").read_text())
    assert meta["vae"]["path"] == "../vae" and (out / "vae" / "config.json").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["models"]["monolith"]["vae"] == meta["vae"]["fingerprint"]
    assert cfg["models"]["monolith"]["architecture"].startswith("UNet")
    moved = tmp_path / "elsewhere"
    shutil.move(out, moved)
    hidden = vae_dir.with_name("vae-hidden")
    vae_dir.rename(hidden)  # the original VAE is not needed any more
    try:
        code, _, err = cli(capsys, "sample", moved, "--model", "monolith", "--n", 2, "--sample-steps", 2,
                           "--out", tmp_path / "s.npz")  # fmt: skip
    finally:
        hidden.rename(vae_dir)
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape == (2, 1, 8, 8)


def test_sampling_cost_counts_the_vaes_decoder(latent_run, vae_dir):
    """Issue 16: a latent model's GFLOPs per image include decoding its sample once. The oracle is
    torch's stock FlopCounterMode around diffusers' own AutoencoderKL.decode of one latent, plus
    the mid-block's attention that the stock counter skips on the CPU, by hand: N = 4·4 tokens of
    C = 16 channels, QKᵀ and AV at 2·N²·C each."""
    from torch.utils.flop_counter import FlopCounterMode

    from decentdiff.config import SampleConfig
    from decentdiff.generate import generate
    from decentdiff.run import Run

    vae = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        vae.decode(torch.zeros(1, 4, 4, 4))
    n_tok, ch = 4 * 4, 16
    want = (counter.get_total_flops() + 2 * (2 * n_tok * n_tok * ch)) / 1e9
    assert want > 0
    gen = generate(Run(latent_run), "monolith", SampleConfig(n=3, steps=2, seed=0), progress=False)
    assert gen.cost["vae_decode_gflops_per_image"] == pytest.approx(want, rel=1e-6)
    networks = sum(gen.cost["network_evals_per_image"].values())  # forward passes per image
    assert networks > 0
    assert gen.cost["gflops_per_image"] > want  # the networks' share is still there


def test_resume_reuses_the_cache_and_a_changed_vae_is_refused(latent_run, vae_dir, capsys):
    before = sorted(p.name for p in (latent_run / "latents").glob("*.npy"))
    code, _, err = cli(capsys, "train", "monolith", latent_run, "--preset", "tiny", "--steps", 4,
                       "-q")  # fmt: skip
    assert code == 0, err
    assert json.loads((latent_run / "monolith" / "meta.json").read_text())["step"] == 4
    assert sorted(p.name for p in (latent_run / "latents").glob("*.npy")) == before
    make_vae(vae_dir, seed=1)  # other weights in the same place (this module's last test)
    code, _, err = cli(capsys, "sample", latent_run, "--model", "monolith", "--n", 2, "--sample-steps", 2,
                       "--out", latent_run / "x.npz")  # fmt: skip
    assert code == 2 and "changed since the model was trained" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "train", "monolith", latent_run, "--preset", "tiny", "--steps", 6,
                       "-q")  # fmt: skip
    assert code == 2 and "restore that VAE, or pass --fresh" in err
