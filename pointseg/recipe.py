"""A model's feature recipe: how its input is made from a raw file, stored in checkpoints.

:class:`FeatureRecipe` is plain data (the reader options, the transforms before
voxelization, the voxel size, the feature keys, the class names and codes). ``pointseg-train``
writes one into every checkpoint (:func:`feature_recipe`, under ``RECIPE_KEY``) and
:func:`stored_recipe` reads it back, so a model trained on prepared scenes labels the raw
file the scenes came from with the same features. ``pointseg.segmenter`` and
``pointseg-export`` build their pipelines from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pointseg.io import read_points

Sample = dict[str, Any]
RECIPE_KEY = "pointseg_recipe"  # the checkpoint entry holding FeatureRecipe.to_dict()
_VOXELIZE = "pointseg.data.transforms.Voxelize"


@dataclass(frozen=True)
class FeatureRecipe:
    """How a model's input is made from a raw file; plain data, stored in checkpoints."""

    class_names: tuple[str, ...]
    feat_keys: tuple[str, ...]
    voxel_size: float
    transforms: tuple[dict[str, Any], ...] = ()  # Hydra configs, applied before voxelizing
    reader: dict[str, Any] = field(default_factory=dict)  # keyword options of read_points
    # the source code (e.g. ASPRS) of each class in the data it was trained on: the first code
    # the preparer's class map gave it; predict writes these back into classified copies
    class_codes: tuple[int, ...] | None = None

    @classmethod
    def from_data_config(
        cls,
        data: Mapping[str, Any],
        *,
        reader: Mapping[str, Any] | None = None,
        class_codes: Sequence[int] | None = None,
    ) -> FeatureRecipe:
        """The recipe of a (resolved, plain) ``data`` config, whose ``val_transforms`` end
        with ``Voxelize``; ``reader``: the reader options of the dataset's raw files;
        ``class_codes``: each class's source code in them."""
        where = "data.val_transforms"
        transforms = [dict(t) for t in data.get("val_transforms") or []]
        if not transforms or transforms[-1].get("_target_") != _VOXELIZE:
            got = [t.get("_target_") for t in transforms]
            raise ValueError(f"{where} must end with {_VOXELIZE} (got {got})")
        vox = transforms.pop()
        if vox.get("mode", "mean") != "mean":
            raise ValueError(f"{where}: the last Voxelize must use mode=mean (got {vox['mode']})")
        recipe = cls(
            class_names=tuple(data["class_names"]),
            feat_keys=tuple(vox["feat_keys"]),
            voxel_size=float(vox["voxel_size"]),
            transforms=tuple(transforms),
            reader=dict(reader or {}),
            class_codes=None if class_codes is None else tuple(int(c) for c in class_codes),
        )
        recipe.check()
        return recipe

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "checkpoint") -> FeatureRecipe:
        try:
            recipe = cls(
                class_names=tuple(d["class_names"]),
                feat_keys=tuple(d["feat_keys"]),
                voxel_size=float(d["voxel_size"]),
                transforms=tuple(dict(t) for t in d.get("transforms", ())),
                reader=dict(d.get("reader") or {}),
                class_codes=None
                if d.get("class_codes") is None
                else tuple(int(c) for c in d["class_codes"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: damaged feature recipe ({err!r}); re-train") from err
        recipe.check()
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only (checkpoints load with ``weights_only=True``)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def check(self) -> None:
        if not self.class_names:
            raise ValueError("a feature recipe needs at least one class name")
        if not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {self.voxel_size}")
        if not self.feat_keys:
            raise ValueError("a feature recipe needs at least one feature key")
        if self.class_codes is not None and len(self.class_codes) != len(self.class_names):
            raise ValueError(
                f"class_codes {list(self.class_codes)} must give one code for each of the "
                f"{len(self.class_names)} classes {list(self.class_names)}"
            )

    def build_transforms(self) -> Callable[[Sample], Sample]:
        from pointseg.data.transforms import Compose
        from pointseg.targets import instantiate

        return Compose([instantiate(dict(t)) for t in self.transforms])

    @property
    def derived(self) -> set[str]:
        """Feature keys the transforms add (e.g. ``AddHeight``'s ``height``)."""
        from pointseg.targets import locate

        keys: set[str] = set()
        for t in self.transforms:
            keys |= set(getattr(locate(t["_target_"]), "adds", ()))
        return keys

    @property
    def file_features(self) -> list[str]:
        """Features the raw file (through the reader) must provide."""
        return [k for k in self.feat_keys if k not in self.derived]

    def read(self, path: str | Path, **options: Any) -> Sample:
        """Read a raw file as the model's training samples were made from theirs."""
        feats = self.file_features
        return read_points(
            path, require=feats, feat_keys=self.feat_keys, only=feats, **self.reader, **options
        )


def stored_recipe(
    ckpt: Mapping[str, Any],
    *,
    data_overrides: Mapping[str, Any] | None = None,
    where: str = "checkpoint",
) -> Any:
    """The checkpoint's ``FeatureRecipe``: the one written at training time, or, with data
    overrides or in a checkpoint from before recipes were stored, one made from the stored
    data config (keeping the stored reader options)."""
    from omegaconf import OmegaConf

    stored = ckpt.get(RECIPE_KEY)
    if stored is not None and not data_overrides:
        return FeatureRecipe.from_dict(stored, where=where)
    data = OmegaConf.merge(OmegaConf.create(ckpt["pointseg_config"]["data"]), data_overrides or {})
    reader = dict(stored.get("reader") or {}) if stored is not None else {}
    plain = OmegaConf.to_container(data, resolve=True)
    return FeatureRecipe.from_data_config(plain, reader=reader)


def reader_options(dataset: Any) -> dict[str, Any]:
    """The reader options of a dataset's raw files (``reader_options()`` where it has one)."""
    get: Callable[[], Mapping[str, Any]] | None = getattr(dataset, "reader_options", None)
    return dict(get()) if get is not None else {}


def source_codes(dataset: Any, class_names: Sequence[str]) -> list[int] | None:
    """Each class's source code from a dataset's class map (``class_map()`` where it has one:
    the first code the preparer mapped to the class), or None where a class has none."""
    get: Callable[[], Mapping[str, Any] | None] | None = getattr(dataset, "class_map", None)
    cmap = get() if get is not None else None
    classes = (cmap or {}).get("classes") or {}
    codes = [list(classes.get(n) or []) for n in class_names]
    return [int(c[0]) for c in codes] if codes and all(codes) else None


def feature_recipe(run_config: Mapping[str, Any], datamodule: Any = None) -> FeatureRecipe:
    """The recipe of a training run: its data config plus its dataset's reader options and
    class codes."""
    reader: dict[str, Any] = {}
    codes = None
    if datamodule is not None:
        factory = getattr(datamodule, "factories", {}).get("val")
        if factory is not None:
            dataset = factory(transform=None)
            reader = reader_options(dataset)
            codes = source_codes(dataset, run_config["data"]["class_names"])
    return FeatureRecipe.from_data_config(run_config["data"], reader=reader, class_codes=codes)
