"""The "shapes" world: captioned clips of one solid object moving on a uniform background.

This module follows `shared/spec/shapes.md` exactly: vocabulary, geometry, motions, caption grammar and the
held-out (colour, shape) pairs that are never rendered for training. Edges are anti-aliased from signed distances,
so sub-pixel motion is smooth.

    clip = render_clip(Scene(colour="red", shape="circle", motion="right", background="black"), rng)
    clip.frames   # (T, H, W, 3) uint8
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 200, 210),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
}
# Colours outside the spec's vocabulary, for experiments only (teaching a trained model an unseen colour with a
# LoRA). A Scene may name them, but nothing draws them unless asked (`colours=`): never in the default training data.
EXTRA_COLOURS: dict[str, tuple[int, int, int]] = {
    "pink": (240, 110, 180),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "gray": (128, 128, 128),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "still", "bounce")
HELD_OUT = frozenset({("purple", "triangle"), ("orange", "circle"), ("cyan", "square")})

# The canonical motion phrases of the spec, and the synonyms training captions draw from.
CANONICAL_MOTION = {
    "left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
    "grow": "growing", "shrink": "shrinking", "still": "standing still", "bounce": "bouncing left and right",
}
MOTION_SYNONYMS = {
    "left": ("moving left", "sliding left", "heading left"),
    "right": ("moving right", "sliding right", "heading right"),
    "up": ("moving up", "sliding up", "rising upwards"),
    "down": ("moving down", "sliding down", "sinking downwards"),
    "grow": ("growing", "getting bigger", "expanding"),
    "shrink": ("shrinking", "getting smaller", "contracting"),
    "still": ("standing still", "not moving", "motionless"),
    "bounce": ("bouncing left and right", "bouncing side to side", "bouncing back and forth"),
}
SHAPE_SYNONYMS = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape"),
}
COLOUR_SYNONYMS = {c: (c, f"{c}-coloured") for c in (*COLOURS, *EXTRA_COLOURS)}
BACKGROUND_SYNONYMS = {b: (b, f"plain {b}") for b in BACKGROUNDS}
TEMPLATES = (
    "a {colour} {shape} {motion} on a {background} background",
    "on a {background} background, a {colour} {shape} {motion}",
    "a {colour} {shape} on a {background} background, {motion}",
    "{background} background with a {colour} {shape} {motion}",
    "a {shape} in {colour} {motion} against a {background} backdrop",
    "video of a {colour} {shape} {motion} over a {background} background",
)

@dataclass(frozen=True)
class Scene:
    """The four attributes a caption names."""

    colour: str
    shape: str
    motion: str
    background: str

    def __post_init__(self):
        if (self.colour not in COLOURS and self.colour not in EXTRA_COLOURS) or self.shape not in SHAPES:
            raise ValueError(f"unknown colour/shape {self.colour!r}/{self.shape!r}")
        if self.motion not in MOTIONS or self.background not in BACKGROUNDS:
            raise ValueError(f"unknown motion/background {self.motion!r}/{self.background!r}")
        if self.colour == "white" and self.background == "white":
            raise ValueError("a white object never goes on a white background")

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT

    def canonical_caption(self) -> str:
        return f"a {self.colour} {self.shape} {CANONICAL_MOTION[self.motion]} on a {self.background} background"


@dataclass
class Clip:
    frames: np.ndarray    # (T, H, W, 3) uint8
    coverage: np.ndarray  # (T, H, W) float32 in [0, 1]: how much of each pixel the object covers
    centres: np.ndarray   # (T, 2) float32: object centre (x, y) in pixels
    sizes: np.ndarray     # (T,) float32: side of the bounding square in pixels
    scene: Scene
    caption: str


def all_scenes(held_out: bool | None = None) -> list[Scene]:
    """Every valid scene; `held_out=False` gives the training scenes, `True` the held-out ones."""
    scenes = []
    for colour in COLOURS:
        for shape in SHAPES:
            if held_out is not None and ((colour, shape) in HELD_OUT) != held_out:
                continue
            for motion in MOTIONS:
                for background in BACKGROUNDS:
                    if not (colour == "white" and background == "white"):
                        scenes.append(Scene(colour, shape, motion, background))
    return scenes


def random_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One of the templates with a random synonym for each attribute."""
    def pick(options):
        return options[rng.integers(len(options))]

    template = pick(TEMPLATES)
    return template.format(
        colour=pick(COLOUR_SYNONYMS[scene.colour]), shape=pick(SHAPE_SYNONYMS[scene.shape]),
        motion=pick(MOTION_SYNONYMS[scene.motion]), background=pick(BACKGROUND_SYNONYMS[scene.background]),
    )


_CANONICAL_RE = re.compile(
    r"^a (?P<colour>\w+) (?P<shape>\w+) (?P<motion>.+?) on a (?P<background>\w+) background$"
)


def parse_canonical(prompt: str) -> Scene | None:
    """The scene a canonical-form prompt names, or None if the prompt is not in canonical form."""
    m = _CANONICAL_RE.match(prompt.strip().lower())
    if m is None:
        return None
    motion = {v: k for k, v in CANONICAL_MOTION.items()}.get(m["motion"])
    try:
        return Scene(m["colour"], m["shape"], motion, m["background"]) if motion else None
    except ValueError:
        return None


def _check_size(frames: int, height: int, width: int) -> None:
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frames must be 1 + 4k, got {frames}")
    if height % 16 or width % 16 or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive multiples of 16, got {height}x{width}")


def _trajectory(motion: str, frames: int, side: float, height: int, width: int, rng: np.random.Generator):
    """Centres (T, 2) and sizes (T,) in pixels for one motion; the object stays inside the frame."""
    u = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)  # fraction of the clip elapsed
    sizes = np.full(frames, side)
    if motion == "grow":
        sizes = side * (0.6 + 1.2 * u)
    elif motion == "shrink":
        sizes = side * (1.8 - 1.2 * u)
    margin = sizes.max() / 2
    cx = np.full(frames, rng.uniform(margin, width - margin))
    cy = np.full(frames, rng.uniform(margin, height - margin))
    if motion in ("left", "right", "up", "down"):
        extent = width if motion in ("left", "right") else height
        travel = rng.uniform(0.35, 0.55) * extent
        start = rng.uniform(side / 2, extent - side / 2 - travel)  # lowest coordinate of the path
        path = start + travel * (u if motion in ("right", "down") else 1.0 - u)
        if motion in ("left", "right"):
            cx = path
        else:
            cy = path
    elif motion == "bounce":
        cx = _bounce_path(frames, side, width, rng)
    return np.stack([cx, cy], axis=1).astype(np.float32), sizes.astype(np.float32)


def _bounce_path(frames: int, side: float, width: int, rng: np.random.Generator) -> np.ndarray:
    """Horizontal positions with elastic reflection off the frame's left and right edges."""
    speed = rng.uniform(0.35, 0.55) * width / 16  # pixels per frame: 35-55 % of the side per 17 frames
    lo, hi = side / 2, width - side / 2
    span = hi - lo
    x0 = rng.uniform(lo, hi)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    # Unfold the reflections: travel on a line of period 2*span, then fold back into [lo, hi].
    s = (x0 - lo) + direction * speed * np.arange(frames)
    s = np.mod(s, 2 * span)
    return lo + np.where(s <= span, s, 2 * span - s)


def _coverage(shape: str, centres: np.ndarray, sizes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel the shape covers, (T, H, W) float32.

    Anti-aliased from the signed distance d to the shape's edge (negative inside): coverage = clip(0.5 - d, 0, 1),
    exact for a straight edge through a pixel and close everywhere else.
    """
    x = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :] - centres[:, 0, None, None]   # (T, 1, W)
    y = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None] - centres[:, 1, None, None]  # (T, H, 1)
    half = (sizes / 2)[:, None, None]
    if shape == "circle":
        d = np.sqrt(x**2 + y**2) - half
    elif shape == "square":
        d = np.maximum(np.abs(x), np.abs(y)) - half
    else:  # isosceles triangle, apex up at the top middle of the bounding square, base along its bottom
        sides = (2 * np.abs(x) - (y + half)) / np.sqrt(5.0)  # distance to the slanted edges
        d = np.maximum(y - half, sides)
    return np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)


def render_clip(
    scene: Scene,
    rng: np.random.Generator,
    frames: int = 17,
    height: int = 64,
    width: int = 64,
    caption: str | None = None,
) -> Clip:
    """Render one clip of `scene`; positions, size and speed are drawn from `rng` as the spec says."""
    _check_size(frames, height, width)
    side = rng.uniform(0.30, 0.40) * min(height, width)
    centres, sizes = _trajectory(scene.motion, frames, side, height, width, rng)
    coverage = _coverage(scene.shape, centres, sizes, height, width)
    fg = np.asarray(COLOURS.get(scene.colour) or EXTRA_COLOURS[scene.colour], np.float32)
    bg = np.asarray(BACKGROUNDS[scene.background], np.float32)
    pixels = bg + coverage[..., None] * (fg - bg)  # (T, H, W, 3)
    frames_u8 = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Clip(frames_u8, coverage, centres, sizes, scene, caption or scene.canonical_caption())


def random_training_scene(rng: np.random.Generator, colours: tuple[str, ...] | None = None) -> Scene:
    """A uniformly drawn scene that is not held out (and not white on white); `colours` (default: the vocabulary)
    are the colours to draw from, extra colours included."""
    names = tuple(colours) if colours else tuple(COLOURS)
    unknown = [c for c in names if c not in COLOURS and c not in EXTRA_COLOURS]
    if unknown:
        raise ValueError(f"unknown colours {unknown}; known: {[*COLOURS, *EXTRA_COLOURS]}")
    while True:
        colour = names[rng.integers(len(names))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        if (colour, shape) in HELD_OUT or (colour == "white" and background == "white"):
            continue
        return Scene(colour, shape, MOTIONS[rng.integers(len(MOTIONS))], background)


def random_training_clip(rng: np.random.Generator, frames: int = 17, height: int = 64, width: int = 64,
                         colours: tuple[str, ...] | None = None) -> Clip:
    """A training clip with a randomly phrased caption; held-out pairs are never produced."""
    scene = random_training_scene(rng, colours)
    return render_clip(scene, rng, frames, height, width, caption=random_caption(scene, rng))
