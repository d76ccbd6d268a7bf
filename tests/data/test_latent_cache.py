import json

import pytest
import torch

import kinema
from kinema.data.latent_cache import LatentCache, build_cache
from kinema.data.video_folder import VideoDataConfig, VideoFolder
from tests.data.media import make_folder

CFG = VideoDataConfig(frames=9, size=32)


def test_cache_holds_raw_posterior_means_and_resumes_shard_by_shard(tmp_path, tiny_model_dir):
    data = make_folder(tmp_path / "data", n=5)
    pipe = kinema.load_pipeline(tiny_model_dir)
    m = build_cache(data, pipe, tmp_path / "c", CFG, shard_size=2)
    assert (m["clips"], len(m["shards"]), m["encoded_shards"]) == (5, 3, 3)
    assert [f.rsplit("/", 1)[1] for f, _ in m["skipped"]] == ["broken.mp4"]
    cache = LatentCache(tmp_path / "c")
    folder = VideoFolder(data, CFG)
    i = cache.captions.index(folder.items[0].caption)
    z, text = cache.fetch([i])
    with torch.no_grad():
        mean, _ = pipe.vae.encode_moments(folder.load(0)[None])
        expected_text = pipe.text_encoder([folder.items[0].caption])
    torch.testing.assert_close(z, mean)  # raw, not normalised
    torch.testing.assert_close(text, expected_text, atol=2e-3, rtol=1e-3)  # stored as float16
    shards = sorted(p for p in (tmp_path / "c").glob("9x32x32-*.safetensors"))
    kept, removed = shards[0].stat().st_mtime_ns, shards[1]
    removed.unlink()  # as if the run had been killed before writing it
    (tmp_path / "c" / ".9x32x32-00001.safetensors.x.tmp").write_bytes(b"partial")  # a killed write's temp file
    m2 = build_cache(data, pipe, tmp_path / "c", CFG, shard_size=2)
    assert (m2["encoded_shards"], m2["reused_shards"], m2["clips"]) == (1, 2, 5)
    assert shards[0].stat().st_mtime_ns == kept and removed.exists()
    with pytest.raises(ValueError, match="other settings"):
        build_cache(data, pipe, tmp_path / "c", CFG, shard_size=3)


def test_an_incomplete_cache_is_refused(tmp_path, tiny_model_dir):
    build_cache(make_folder(tmp_path / "data", n=1, corrupt=False), kinema.load_pipeline(tiny_model_dir),
                tmp_path / "c", CFG)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    (tmp_path / "c" / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match="incomplete"):
        LatentCache(tmp_path / "c")
    with pytest.raises(ValueError, match="not a latent cache"):
        LatentCache(tmp_path / "data")
