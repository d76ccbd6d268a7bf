import pytest
import torch

from kinema.video.lut import apply_lut, identity_lut, load_cube, parse_cube, write_cube

TOL = 1 / 255


def _cube_text(size: int, fn, header: str = "") -> str:
    """A .cube file written by hand, red varying fastest: fn(r, g, b) -> (r', g', b')."""
    rows = []
    for b in range(size):
        for g in range(size):
            for r in range(size):
                rows.append("%.6f %.6f %.6f" % fn(*(v / (size - 1) for v in (r, g, b))))
    return f'# made by a test\nTITLE "test lut"\n{header}LUT_3D_SIZE {size}\n\n' + "\n".join(rows) + "\n"


def _frames(seed=0):
    return torch.rand(4, 12, 10, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [17, 33])
def test_identity_cube_leaves_frames_unchanged(tmp_path, size):
    path = tmp_path / "id.cube"
    path.write_text(_cube_text(size, lambda r, g, b: (r, g, b)))
    lut = load_cube(path)
    assert lut.size == size and lut.title == "test lut"
    x = _frames()
    assert (apply_lut(x, lut) - x).abs().max() <= TOL


def test_channel_swap_cube(tmp_path):
    path = tmp_path / "swap.cube"
    path.write_text(_cube_text(17, lambda r, g, b: (b, r, g)))
    x = _frames(1)
    assert (apply_lut(x, load_cube(path)) - x[..., [2, 0, 1]]).abs().max() <= TOL


def test_domain_and_write_round_trip(tmp_path):
    text = _cube_text(5, lambda r, g, b: (r, g, b), header="DOMAIN_MIN 0 0 0\nDOMAIN_MAX 2 2 2\n")
    lut = parse_cube(text)
    x = _frames()
    assert (apply_lut(x, lut) - x / 2).abs().max() <= TOL  # input 1 sits halfway through the [0, 2] domain
    back = load_cube(write_cube(tmp_path / "w.cube", lut))
    assert back.domain_max == (2.0, 2.0, 2.0) and torch.allclose(back.table, lut.table, atol=1e-6)
    assert (apply_lut(x, identity_lut(2)) - x).abs().max() <= TOL


@pytest.mark.parametrize("body,needle", [
    ("LUT_3D_SIZE 2\n0 0 0\n1 0 0\n0 1 0\n1 1 0\n0 0 1\n1 0 1\n0 1 1\n", ":8: expected 2^3 = 8 data rows"),
    ("LUT_3D_SIZE 2\n0 0 0\n1 0\n", ":3: a data row needs 3 values, got 2"),
    ("LUT_3D_SIZE 2\n0 0 0\n1 x 0\n", ":3: non-numeric"),
    ("TITLE \"no size\"\n0 0 0\n", "missing LUT_3D_SIZE"),
    ("LUT_1D_SIZE 16\n0 0 0\n", ":1: 1D LUTs are not supported"),
    ("LUT_3D_SIZE 1\n0 0 0\n", ":1: LUT_3D_SIZE must be"),
    ("LUT_3D_SIZE 2\nDOMAIN_MIN 0 0\n", ":2: DOMAIN_MIN needs 3 values"),
    ("LUT_3D_SIZE 2\n0 0 nan\n", ":2: non-finite"),
])
def test_malformed_cube_names_file_and_line(tmp_path, body, needle):
    path = tmp_path / "bad.cube"
    path.write_text(body)
    with pytest.raises(ValueError) as e:
        load_cube(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_unreadable_cube(tmp_path):
    with pytest.raises(ValueError, match="cannot read LUT"):
        load_cube(tmp_path / "missing.cube")
