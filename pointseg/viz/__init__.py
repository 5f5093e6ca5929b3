"""Looking at results: ``pointseg-viz`` (``show``: the command; ``window``: the Open3D
window; ``render``: headless pictures), eval's report (``report``: confusion matrix, per-class
IoU, worst scenes) and what they share (``colors``: the class palette, the errors view, the
camera).
"""

from pointseg.viz.colors import error_colors, label_colors, palette
from pointseg.viz.render import render_comparison, render_views
from pointseg.viz.show import main, visualize

__all__ = [
    "error_colors",
    "label_colors",
    "main",
    "palette",
    "render_comparison",
    "render_views",
    "visualize",
]
