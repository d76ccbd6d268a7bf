import os
import stat

import numpy as np

from kinema.atomic import temp_beside
from kinema.video.io import Video


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_temp_files_and_what_they_become_get_ordinary_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        fd, tmp = temp_beside(tmp_path / "model.json")
        os.close(fd)
        assert _mode(tmp) == 0o640 and os.path.dirname(tmp) == str(tmp_path)
        assert os.path.basename(tmp).startswith(".model.json.")
        os.umask(0o022)
        out = tmp_path / "clip.mp4"
        Video(np.zeros((5, 16, 16, 3), np.uint8), 8.0).save(out)
        assert _mode(out) == 0o644            # mkstemp alone gives 0600: a video nobody else can read
    finally:
        os.umask(old)


def test_files_written_by_name_get_ordinary_permissions_and_failures_leave_nothing(tmp_path):
    import pytest
    import torch

    from kinema.atomic import atomic_path
    from kinema.convert.torch_files import atomic_save_safetensors
    from kinema.pipelines.latents import save_latents

    old = os.umask(0o022)
    try:
        atomic_save_safetensors({"w": torch.zeros(2)}, tmp_path / "dit.safetensors")
        save_latents(tmp_path / "run.safetensors", torch.zeros(1, 4, 2, 2, 2), {"seed": 0})
        # safetensors re-creates the file it writes as 0600 whatever the temp file's mode was
        assert _mode(tmp_path / "dit.safetensors") == 0o644 and _mode(tmp_path / "run.safetensors") == 0o644
        with pytest.raises(RuntimeError), atomic_path(tmp_path / "lost.bin") as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("writer failed")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dit.safetensors", "run.safetensors"]
    finally:
        os.umask(old)
