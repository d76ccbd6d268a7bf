import numpy as np
import pytest

from kinema.data.shapes import Scene, render_clip
from kinema.eval.run import judge_row, load_prompts, summarise
from kinema.eval.vae import reconstruction_psnr
from tests.conftest import tiny_vae


def test_canonical_prompt_list_covers_the_world():
    prompts = load_prompts("kinema/eval/prompts/canonical.txt")
    scenes = [s for _, s in prompts]
    assert sum(s.held_out for s in scenes) == 24 and len(scenes) == 66
    assert {s.motion for s in scenes if not s.held_out} == {"left", "right", "up", "down", "grow", "shrink",
                                                             "still", "bounce"}
    assert len({(s.colour, s.shape) for s in scenes if not s.held_out}) == 21


def test_bad_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle moving left on a black background\nsomething else\n")
    with pytest.raises(ValueError, match="p.txt:2"):
        load_prompts(tmp_path / "p.txt")
    with pytest.raises(ValueError, match="cannot read"):
        load_prompts(tmp_path / "absent.txt")


def test_rows_and_summary_on_real_and_wrong_clips():
    rng = np.random.default_rng(0)
    right = Scene("red", "circle", "right", "black")
    held = Scene("orange", "circle", "up", "gray")
    rows = [judge_row(render_clip(right, rng).frames, right), judge_row(render_clip(held, rng).frames, held)]
    wrong = render_clip(Scene("blue", "square", "left", "black"), rng).frames
    rows.append(judge_row(wrong, right))
    summary = summarise(rows)
    assert summary["held-out"]["all"] == 1.0 and summary["held-out"]["n"] == 1
    assert summary["seen"]["background"] == 1.0 and summary["seen"]["colour"] == 0.5
    assert summary["seen"]["motion"] == 0.5 and summary["seen"]["all"] == 0.5


def test_reconstruction_psnr_runs_and_is_low_for_an_untrained_vae():
    r = reconstruction_psnr(tiny_vae(), n=4, frames=5, size=32, batch=2)
    assert r["clips"] == 4 and r["psnr_mean"] < 25


def test_eval_command_end_to_end(tiny_model_dir, tmp_path, capsys):
    import json

    from kinema.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("# two prompts\na red circle moving left on a black background\n"
                       "a cyan square growing on a gray background\n")
    out = tmp_path / "r.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--seeds", "2", "--steps", "2",
                 "--vae-recon", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "| seen | 2 |" in printed and "| held-out | 2 |" in printed and "PSNR" in printed
    result = json.loads(out.read_text())
    assert result["generated"]["seen"]["n"] == 2 and "vae_recon" in result and result["seeds"] == 2
    assert main(["eval", "--model", str(tiny_model_dir), "--prompts", str(tmp_path / "none.txt")]) == 2


def test_eval_image_mode(tiny_model_dir, tmp_path, capsys):
    from kinema.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving left on a black background\n")
    code = main(["eval", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--seeds", "1", "--steps", "2",
                 "--image"])
    printed = capsys.readouterr().out
    assert code == 0 and "image-to-video" in printed and "first output frame vs input image" in printed


def test_i2v_prompt_list():
    prompts = load_prompts("kinema/eval/prompts/i2v.txt")
    assert len(prompts) == 24 and not any(s.held_out for _, s in prompts)
    motions = [s.motion for _, s in prompts]
    assert all(motions.count(m) == 3 for m in set(motions)) and len(set(motions)) == 8


def test_eval_keyframes_mode(tiny_model_dir, tmp_path, capsys):
    import json

    from kinema.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving left on a black background\na green square growing on a gray background\n")
    out = tmp_path / "r.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--seeds", "1", "--steps", "1",
                 "--keyframes", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "first+last frame" in printed and "| seen | 2 |" in printed
    assert "first output frame vs input image" in printed and "last output frame vs last image" in printed
    result = json.loads(out.read_text())
    assert result["mode"] == "first+last frame" and "motion" in result["generated"]["seen"]
    for end in ("first", "last"):
        assert set(result[f"{end}_frame_psnr"]) == {"mean", "min"}


def test_keyframe_psnr_compares_each_end_with_its_image():
    """A stand-in model that returns its first image, then its last: both ends match exactly (inf dB)."""
    from kinema.eval.run import generate_from_images, generate_from_keyframes
    from kinema.pipelines.text_to_video import GenerationSettings
    from kinema.video.io import Video

    class Echo:
        def settings(self, **kw):
            return GenerationSettings(frames=9, height=32, width=32)

        def generate(self, prompts, seeds, image, last_image, **kw):
            end = image if last_image is None else last_image
            return [Video(np.stack([image] * 8 + [end]))]

    scene = Scene("red", "circle", "right", "black")
    videos, psnrs = generate_from_keyframes(Echo(), ["x"], [scene], seeds=2)
    assert len(videos) == 2 and psnrs["first"] == psnrs["last"] == [float("inf")] * 2
    _, first = generate_from_images(Echo(), ["x"], [scene], seeds=1)
    assert first == [float("inf")]
    _, psnrs = generate_from_keyframes(Echo(), ["x"], [scene], seeds=1, last=False)
    assert psnrs["last"] == []


def test_each_mode_has_a_packaged_prompt_list():
    from kinema.eval.run import MODE_PROMPTS, default_prompts

    for mode in MODE_PROMPTS:
        assert load_prompts(default_prompts(mode))
    assert default_prompts("first+last frame").name == "i2v.txt"
