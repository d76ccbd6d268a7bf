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
