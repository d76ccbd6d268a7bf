import json

import numpy as np
import pytest

from kinema.data.shapes import BACKGROUNDS, COLOURS, Scene, render_clip
from kinema.eval.extension import colour_drift, measure_extension, seam_ratios, summarise_extension, window_starts
from kinema.video.io import Video

SEAMS = [17, 29, 41, 53]  # the shapes model: 17-frame windows, context 5, 17 -> 65 frames


def _clip(motion: str, frames: int = 65, seed: int = 1) -> np.ndarray:
    return render_clip(Scene("red", "circle", motion, "black"), np.random.default_rng(seed), frames).frames


def test_window_starts():
    assert window_starts(17, 65, 17, 5) == SEAMS
    assert window_starts(9, 25, 9, 5) == [9, 13, 17, 21]
    assert window_starts(17, 61, 17, 5) == SEAMS  # the last window is cut short
    with pytest.raises(ValueError, match="exceed"):
        window_starts(17, 17, 17, 5)
    with pytest.raises(ValueError, match="context"):
        window_starts(17, 65, 17, 17)


def test_window_starts_match_extend_video(tiny_model_dir, monkeypatch):
    """Paint each appended window a constant grey of its own: the frames where the grey changes are the seams."""
    import kinema.pipelines.extend as extend
    from kinema.pipelines.loading import load_pipeline

    painted = []

    def paint(new, anchor, strength, method):
        painted.append(len(painted) + 1)
        return np.full_like(new, 10 * len(painted))
    monkeypatch.setattr(extend, "match_to_input", paint)
    pipe = load_pipeline(tiny_model_dir)
    src = Video(np.zeros((9, 32, 32, 3), np.uint8))
    out = extend.extend_video(pipe, src, "a red circle moving right on a black background", 25, 5, steps=1,
                              blend=0).frames
    changes = [t for t in range(1, len(out)) if out[t, 0, 0, 0] != out[t - 1, 0, 0, 0]]
    assert changes == window_starts(9, 25, pipe.defaults.frames, 5) and len(painted) == 4


@pytest.mark.parametrize("motion", ["right", "down", "bounce", "grow", "shrink"])
def test_a_rendered_clip_has_no_seams(motion):
    r = seam_ratios(_clip(motion), SEAMS)
    assert len(r["seam_ratios"]) == 4 and max(abs(x - 1) for x in r["seam_ratios"]) < 0.1
    assert r["within_diff"] > 0


def test_a_jump_at_a_seam_shows():
    c = _clip("bounce", frames=69)
    jump = np.concatenate([c[:29], c[33:]])  # four frames of motion skipped at the second seam
    r = seam_ratios(jump, SEAMS)
    assert r["seam_ratios"][1] > 3 and r["max_seam_ratio"] == r["seam_ratios"][1]
    assert all(abs(x - 1) < 0.1 for i, x in enumerate(r["seam_ratios"]) if i != 1)
    flash = _clip("bounce").copy()
    flash[41:] = np.clip(flash[41:].astype(int) + 30, 0, 255)  # a brightness step at the third seam
    assert seam_ratios(flash, SEAMS)["seam_ratios"][2] > 5
    with pytest.raises(ValueError, match="seams"):
        seam_ratios(jump, [0, 17])


def test_colour_ramp_gives_the_expected_drift():
    c = render_clip(Scene("red", "circle", "bounce", "black"), np.random.default_rng(2), 65)
    fg, bg = np.array(COLOURS["red"], float), np.array(BACKGROUNDS["black"], float)
    ramp = np.zeros((65, 3))
    ramp[:, 1] = np.linspace(0, 16, 65)  # green rises by 16 over the video
    pixels = bg + c.coverage[..., None] * (fg + ramp[:, None, None] - bg)
    frames = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    expected = ramp[53:, 1].mean() - ramp[:17, 1].mean()  # last window's mean over the first's: 12.5
    d = colour_drift(frames, SEAMS)
    assert d["object_drift"] == pytest.approx(expected, abs=0.5) and d["background_drift"] == 0
    assert colour_drift(c.frames, SEAMS)["object_drift"] < 0.5
    row = measure_extension(frames, SEAMS)
    assert not row["pass"] and row["max_seam_ratio"] < 1.5  # drift over 8, seams fine
    assert measure_extension(c.frames, SEAMS)["pass"]


def test_a_lost_object_fails():
    frames = _clip("right").copy()
    frames[53:] = frames[0, 0, 0]  # the object is gone in the last window
    row = measure_extension(frames, SEAMS)
    assert np.isnan(row["object_drift"]) and not row["pass"]
    s = summarise_extension([row, measure_extension(_clip("bounce"), SEAMS)])
    assert s["object_lost"] == 1 and s["pass"] == 0.5 and s["seams"] == 8


def test_eval_extend_end_to_end(tiny_model_dir, tmp_path, capsys):
    from kinema.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle bouncing left and right on a black background\n")
    out = tmp_path / "r.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--seeds", "1", "--steps", "1",
                 "--extend", "25", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "seams at frames [9, 13, 17, 21]" in printed and "worst seam ratio" in printed
    result = json.loads(out.read_text())
    assert result["mode"] == "extension" and result["frames"] == 25 and result["summary"]["n"] == 1
    row = result["videos"][0]
    assert len(row["seam_ratios"]) == 4 and {"within_diff", "object_drift", "background_drift", "pass"} <= set(row)


def test_eval_extend_bad_input(tiny_model_dir, capsys):
    from kinema.cli import main

    base = ["eval", "--model", str(tiny_model_dir), "--prompts", "kinema/eval/prompts/extend.txt"]
    assert main([*base, "--extend", "24"]) == 2 and "1 + 4k" in capsys.readouterr().err
    assert main([*base, "--extend", "9"]) == 2 and "exceed" in capsys.readouterr().err
    assert main([*base, "--extend", "--image"]) == 2 and "not allowed" in capsys.readouterr().err
    assert main([*base, "--extend", "--vae-recon"]) == 2 and "--vae-recon" in capsys.readouterr().err


def test_extend_prompt_list():
    from kinema.eval.run import default_prompts, load_prompts

    prompts = load_prompts(default_prompts("extension"))
    assert len(prompts) >= 8 and all(s.motion == "bounce" for _, s in prompts)  # the one motion that goes on
    assert {s.shape for _, s in prompts} == {"circle", "square", "triangle"} and not any(s.held_out for _, s in prompts)
