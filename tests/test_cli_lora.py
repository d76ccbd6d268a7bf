import json

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kinema
from kinema.cli import main
from kinema.dit.lora import LoRAConfig, LoRALinear, inject_lora, save_lora

PROMPT = "a red circle moving right on a black background"


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A random (non-zero) LoRA file for the tiny model."""
    dit = kinema.load_pipeline(tiny_model_dir).dit
    cfg = LoRAConfig(rank=2, alpha=2)
    inject_lora(dit, cfg, "style", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in dit.modules():
            if isinstance(m, LoRALinear):
                m.adapters["style"].up.weight.normal_(0, 0.5)
    return save_lora(tmp_path_factory.mktemp("lora") / "style.safetensors", dit, "style", cfg)


def _frames(folder):
    """PNG frames (lossless: two x264 encodes of one clip may differ)."""
    return np.stack([np.asarray(Image.open(f)) for f in sorted(Path(folder).glob("frame_*.png"))])


def test_generate_with_several_loras_records_them_and_replays(tiny_model_dir, adapter, tmp_path, capsys):
    common = ["--model", tiny_model_dir, "--steps", "2", "--quiet"]
    assert _run(capsys, "generate", PROMPT, "-o", f"{tmp_path}/plain/", *common)[0] == 0
    code, out, err = _run(capsys, "generate", PROMPT, "-o", f"{tmp_path}/lora/", *common,
                          "--lora", f"{adapter}:0.8", "--lora", adapter)
    assert code == 0, err
    run = json.loads((tmp_path / "lora.json").read_text())
    assert run["lora"] == [[str(adapter), 0.8], [str(adapter), 1.0]]
    assert not np.array_equal(_frames(tmp_path / "plain"), _frames(tmp_path / "lora"))
    code, _, err = _run(capsys, "generate", "--from", tmp_path / "lora.json", "-o", f"{tmp_path}/again/")
    assert code == 0, err
    assert json.loads((tmp_path / "again.json").read_text())["lora"] == run["lora"]
    assert np.array_equal(_frames(tmp_path / "again"), _frames(tmp_path / "lora"))


def test_bad_lora_input_is_one_line_exit_2(tiny_model_dir, adapter, tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 10)
    cases = [(f"{adapter}:strong", "bad LoRA strength"), (tmp_path / "missing.safetensors", "does not exist"),
             (junk, "cannot read LoRA file")]
    for spec, needle in cases:
        code, _, err = _run(capsys, "generate", PROMPT, "-o", tmp_path / "x.mp4", "--model", tiny_model_dir,
                            "--lora", spec, "--quiet")
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _run(capsys, "lora", "fit")
    assert code == 2 and "usage: kinema lora train" in err and len(err.strip().splitlines()) == 1
