"""Classes of the synthetic rooms and the colours each tends to have.

Colours follow per-class tendencies whose ranges overlap (wood tables, cabinets and floors;
white walls, ceilings, lamps and sheets; fabric sofas and beds), so colour alone does not
solve the task.
"""

from __future__ import annotations

import colorsys

import numpy as np

from pointseg.data.datasets.synth.shapes import Paint

CLASS_NAMES: tuple[str, ...] = (
    "floor", "wall", "ceiling", "table", "chair", "sofa", "cabinet", "bed", "clutter",
)  # fmt: skip
FLOOR, WALL, CEILING, TABLE, CHAIR, SOFA, CABINET, BED, CLUTTER = range(len(CLASS_NAMES))

_MATERIALS: dict[str, tuple[float, float, float]] = {
    "light_wood": (0.72, 0.56, 0.38), "mid_wood": (0.55, 0.38, 0.22),
    "dark_wood": (0.33, 0.22, 0.14), "white": (0.9, 0.9, 0.88), "offwhite": (0.85, 0.82, 0.74),
    "light_grey": (0.72, 0.72, 0.72), "grey": (0.5, 0.5, 0.5), "dark_grey": (0.28, 0.28, 0.3),
    "black": (0.1, 0.1, 0.11), "beige": (0.78, 0.7, 0.56), "concrete": (0.6, 0.58, 0.55),
    "terracotta": (0.7, 0.4, 0.3), "metal": (0.62, 0.63, 0.66), "carpet": (0.35, 0.38, 0.45),
    "fabric_red": (0.62, 0.16, 0.17), "fabric_blue": (0.2, 0.3, 0.58),
    "fabric_navy": (0.15, 0.18, 0.35), "fabric_green": (0.28, 0.46, 0.32),
    "mustard": (0.78, 0.6, 0.2), "teal": (0.15, 0.48, 0.5), "leather": (0.42, 0.24, 0.14),
    "pale_blue": (0.75, 0.82, 0.88), "pale_green": (0.8, 0.86, 0.76),
    "pale_yellow": (0.92, 0.88, 0.72), "plant": (0.2, 0.45, 0.2), "dark_plant": (0.1, 0.3, 0.12),
}  # fmt: skip
_WOODS = ("light_wood", "mid_wood", "dark_wood")
_FABRICS = ("fabric_red", "fabric_blue", "fabric_navy", "fabric_green", "mustard", "teal")
# class -> part role -> materials to draw from ("*" = any other role, "random" = any hue)
_PALETTES: dict[int, dict[str, tuple[str, ...]]] = {
    FLOOR: {"*": (*_WOODS, "concrete", "grey", "beige", "carpet", "terracotta")},
    WALL: {"*": ("white", "offwhite", "light_grey", "pale_blue", "pale_green", "pale_yellow",
                 "beige")},
    CEILING: {"*": ("white", "white", "offwhite", "light_grey")},
    TABLE: {"top": (*_WOODS, "white", "black", "grey"), "*": ("metal", "black", "mid_wood")},
    CHAIR: {"*": ("black", "dark_grey", "grey", *_WOODS, *_FABRICS[:3], "white", "leather"),
            "frame": ("metal", "black", "mid_wood", "dark_wood")},
    SOFA: {"*": (*_FABRICS, "grey", "dark_grey", "beige", "leather", "black"),
           "legs": ("dark_wood", "metal", "black")},
    CABINET: {"*": (*_WOODS, "white", "offwhite", "grey", "black"),
              "handle": ("metal", "black", "white")},
    BED: {"frame": (*_WOODS, "white", "grey", "fabric_navy", "beige"),
          "sheet": ("white", "offwhite", "beige", "pale_blue", "light_grey"),
          "*": ("white", "offwhite", *_FABRICS, "grey", "beige", "pale_yellow", "dark_grey")},
    CLUTTER: {"*": ("random", "random", "random", "random", "black", "white", "metal", "grey"),
              "screen": ("black", "dark_grey"), "foliage": ("plant", "dark_plant"),
              "pot": ("terracotta", "white", "black", "grey"), "lamp": ("white", "offwhite"),
              "board": ("white", "white", "random", "black", "light_wood")},
}  # fmt: skip


def painter(rng: np.random.Generator, label: int) -> Paint:
    """Colour source for one instance: each part role draws a material once, then varies it
    (brightness, tint) so two wooden tables are never the same brown."""
    table, chosen = _PALETTES[label], {}

    def paint(role: str) -> np.ndarray:
        if role not in chosen:
            names = table.get(role, table.get("*", ()))
            name = names[int(rng.integers(len(names)))]
            if name == "random":
                base = colorsys.hsv_to_rgb(
                    rng.random(), rng.uniform(0.2, 0.85), rng.uniform(0.3, 0.95)
                )
            else:
                base = _MATERIALS[name]
            rgb = np.asarray(base) * rng.uniform(0.85, 1.12) + rng.normal(0, 0.035, 3)
            chosen[role] = np.clip(rgb, 0.0, 1.0)
        return chosen[role]

    return paint
