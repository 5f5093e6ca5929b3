"""ASPRS classification codes: the class maps that turn a tile's codes into labels
(``pointseg-prepare las``), and the codes a labelled copy gets for each class
(``pointseg-predict``), both from the LAS 1.4 standard table.

The per-point features of a tile are in ``pointseg.io.las_features``, the reader and writer
of LAS/LAZ/COPC files in ``pointseg.io.las_file``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

Unknown = Literal["ignore", "other", "error"]
UNKNOWN_POLICIES = ("ignore", "other", "error")

# ASPRS LAS 1.4 standard codes -> class (see docs/datasets/las.md for the reasons);
# "ignore" codes get label -1: they say nothing about what the point is, or mark noise.
ASPRS: dict[str, Any] = {
    "classes": {
        "ground": [2, 8, 11, 20],  # ground, model key-point, road surface, ignored ground
        "low_vegetation": [3],
        "medium_vegetation": [4],
        "high_vegetation": [5],
        "building": [6],
        "water": [9],
        "other": [10, 13, 14, 15, 16, 17, 19],  # rail, wires, towers, bridge deck, overhead
    },
    "ignore": [0, 1, 7, 12, 18, 21, 22],  # unclassified, noise, overlap, snow, temporal
    "unknown": "error",
}
# the same standard codes folded into two classes; "unclassified" (1) counts as other
GROUND_OTHER: dict[str, Any] = {
    "classes": {
        "ground": [2, 8, 11, 20],
        "other": [1, 3, 4, 5, 6, 9, 10, 13, 14, 15, 16, 17, 19],
    },
    "ignore": [0, 7, 12, 18, 21, 22],
    "unknown": "error",
}
PRESETS: dict[str, dict[str, Any]] = {"asprs": ASPRS, "ground_other": GROUND_OTHER}


@dataclass(frozen=True)
class ClassMap:
    """ASPRS code -> class index (``-1`` = ignore), with a policy for unlisted codes."""

    names: tuple[str, ...]
    codes: dict[int, int]  # code -> class index or -1
    unknown: Unknown = "error"

    def apply(self, classification: np.ndarray, *, source: str = "input") -> np.ndarray:
        """``segment (N,) int64`` for ``classification (N,)`` codes of file ``source``."""
        lut = np.full(256, -2, dtype=np.int64)  # -2 marks codes the map does not list
        for code, label in self.codes.items():
            lut[code] = label
        segment = lut[np.asarray(classification, dtype=np.int64)]
        unlisted = segment == -2
        if unlisted.any():
            found, counts = np.unique(np.asarray(classification)[unlisted], return_counts=True)
            if self.unknown == "error":
                listing = ", ".join(f"{c} ({n} points)" for c, n in zip(found, counts, strict=True))
                raise ValueError(
                    f"{source}: classification code(s) {listing} are not in the class map; "
                    "list them in the class map, or pass unknown=ignore (label -1) or "
                    "unknown=other (needs a class named 'other')"
                )
            segment[unlisted] = -1 if self.unknown == "ignore" else self.names.index("other")
        return segment

    def to_dict(self) -> dict[str, Any]:
        """The map in its file form, codes in the order they were listed."""
        classes = {
            n: [c for c, i in self.codes.items() if i == k] for k, n in enumerate(self.names)
        }
        ignore = [c for c, i in self.codes.items() if i == -1]
        return {"classes": classes, "ignore": ignore, "unknown": self.unknown}


def load_class_map(
    spec: str | Path | Mapping[str, Any] | None, *, unknown: str | None = None
) -> ClassMap:
    """Class map from a preset name (``asprs``, ``ground_other``), a ``.yaml``/``.json`` file,
    an inline YAML/JSON mapping, or a dict.

    The full form is ``{classes: {name: [codes]}, ignore: [codes], unknown: ignore|other|error}``;
    a plain ``{name: [codes]}`` mapping is read as ``classes``. Class order is index order.
    ``unknown`` (if given) overrides the map's policy for codes it does not list.
    """
    what = "class map"
    if spec is None:
        spec = "asprs"
    if isinstance(spec, Path) or (isinstance(spec, str) and spec in PRESETS):
        data: Any = PRESETS[spec] if isinstance(spec, str) else _load_file(spec)
        what = f"class map {spec}"
    elif isinstance(spec, str):
        path = Path(spec)
        if path.suffix.lower() in (".yaml", ".yml", ".json"):
            data, what = _load_file(path), f"class map {path}"
        else:
            import yaml

            try:
                data = yaml.safe_load(spec)
            except yaml.YAMLError as err:
                raise ValueError(
                    f"class_map={spec!r} is not a preset, a file or a mapping: {err}"
                ) from err
            if not isinstance(data, Mapping):
                raise ValueError(
                    f"class_map={spec!r} is neither a preset ({', '.join(PRESETS)}), a .yaml/.json "
                    "file, nor a mapping like '{ground: [2], other: [1]}'"
                )
    else:
        data = spec
    return _parse(data, what=what, unknown=unknown)


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"class map file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def _parse(data: Any, *, what: str, unknown: str | None) -> ClassMap:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what}: expected a mapping, got {type(data).__name__}")
    classes = (
        data["classes"]
        if "classes" in data
        else {k: v for k, v in data.items() if k not in ("ignore", "unknown")}
    )
    if not isinstance(classes, Mapping) or not classes:
        raise ValueError(f"{what}: 'classes' must map class names to lists of ASPRS codes")
    policy = str(unknown if unknown is not None else data.get("unknown", "error"))
    if policy not in UNKNOWN_POLICIES:
        raise ValueError(f"{what}: unknown={policy!r}; use one of {UNKNOWN_POLICIES}")
    names = tuple(str(n) for n in classes)
    if policy == "other" and "other" not in names:
        raise ValueError(f"{what}: unknown=other needs a class named 'other' (classes: {names})")
    codes: dict[int, int] = {}
    groups = [(n, i, v) for i, (n, v) in enumerate(zip(names, classes.values(), strict=True))]
    for name, label, listed in [*groups, ("ignore", -1, data.get("ignore") or [])]:
        listed = [listed] if isinstance(listed, int) else listed
        if not isinstance(listed, Sequence) or isinstance(listed, str):
            raise ValueError(f"{what}: '{name}' must list ASPRS codes, got {listed!r}")
        for code in listed:
            if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
                raise ValueError(f"{what}: '{name}' lists {code!r}; codes are integers 0..255")
            if code in codes:
                raise ValueError(f"{what}: code {code} is listed twice ('{name}' and another)")
            codes[code] = label
    return ClassMap(names=names, codes=codes, unknown=policy)  # type: ignore[arg-type]


# ASPRS standard classes by the names class maps use (LAS 1.4 R15, table 17)
ASPRS_CODES: dict[str, int] = {
    "never_classified": 0, "unclassified": 1, "other": 1, "ground": 2, "low_vegetation": 3,
    "medium_vegetation": 4, "high_vegetation": 5, "building": 6, "noise": 7, "low_point": 7,
    "water": 9, "rail": 10, "road_surface": 11, "road": 11, "wire_guard": 13,
    "wire_conductor": 14, "transmission_tower": 15, "wire_connector": 16, "bridge_deck": 17,
    "bridge": 17, "high_noise": 18,
}  # fmt: skip


def class_codes(class_names: Sequence[str], asprs_map: Any) -> np.ndarray:
    """(K,) uint8 LAS classification code of every class.

    ``asprs_map``: null/"auto" (the standard ASPRS code of a class named like one, else the
    user-definable codes 64, 65, ... in class order), "index", a list of K codes, or a
    mapping name -> code.
    """
    names = list(class_names)
    if isinstance(asprs_map, Mapping):
        missing = [n for n in names if n not in asprs_map]
        if missing:
            raise ValueError(
                f"asprs_map has no code for class(es) {missing}; give one for each of {names}"
            )
        codes = [asprs_map[n] for n in names]
    elif isinstance(asprs_map, Sequence) and not isinstance(asprs_map, str):
        if len(asprs_map) != len(names):
            raise ValueError(f"asprs_map lists {len(asprs_map)} codes for {len(names)} classes")
        codes = list(asprs_map)
    elif asprs_map in (None, "auto"):
        # a class that is no standard ASPRS class gets a user-definable code (64+), never a
        # standard code with another meaning (class index 2 would read as "ground")
        user = iter(range(64, 256))
        std = [ASPRS_CODES.get(n.lower()) for n in names]
        codes = [c if c is not None else next(user) for c in std]
    elif asprs_map == "index":
        codes = list(range(len(names)))
    else:
        raise ValueError(f"asprs_map={asprs_map!r}: use auto, index, a list or a mapping")
    if any(not isinstance(c, int) or not 0 <= c <= 255 for c in codes):
        raise ValueError(f"asprs_map codes must be integers 0..255, got {codes}")
    return np.asarray(codes, dtype=np.uint8)
