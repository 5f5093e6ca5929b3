"""pointseg: semantic segmentation of 3D point clouds with sparse U-Nets."""

__version__ = "0.1.0"

from pointseg.threads import openmp_env_defaults

openmp_env_defaults()  # before torch loads OpenMP; see pointseg/threads.py

# columns of each per-point feature; others have 1 (``hag`` has one per radius: the LAS
# config gives its width in ``data.feature_widths``)
FEATURE_WIDTHS = {"coord": 3, "color": 3, "normal": 3, "returns": 2}


def feature_width(feat_keys: list[str], widths: dict[str, int] | None = None) -> int:
    """Input channels of a model fed ``feat_keys``: the sum of their widths."""
    table = {**FEATURE_WIDTHS, **(widths or {})}
    return sum(int(table.get(k, 1)) for k in feat_keys)


def _register_resolvers() -> None:
    """Config resolvers for numbers derived from others: ``${len:${data.class_names}}``,
    ``${feature_width:${data.feat_keys},${data.feature_widths}}``."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda items: len(items))
    if not OmegaConf.has_resolver("feature_width"):
        OmegaConf.register_new_resolver(
            "feature_width", lambda keys, widths=None: feature_width(list(keys), widths)
        )


_register_resolvers()
