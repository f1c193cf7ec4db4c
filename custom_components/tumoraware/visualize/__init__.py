"""Figures of the paper as PNGs, and how every figure shows a scan.

- :mod:`~tumoraware.visualize.grids`: :func:`save_contour_grid` (grayscale panels with mask
  contours, the grid under every figure) and :func:`save_synthesis_grid` (CT | synthetic MRI |
  reconstructed CT with the CT tumour contour).
- :mod:`~tumoraware.visualize.panels`: one case's Fig. 4 slice (:class:`CasePanel`): cut from a
  volume, saved as ``.npz``, loaded, drawn as a grid.
- :mod:`~tumoraware.visualize.display`: radiological orientation (:func:`reorient_pls`,
  :func:`radiological`, :func:`load_pls`), the slice to show (:func:`largest_area_slice`),
  centring (:func:`pad_stack`) and picking cases (:func:`evenly`), one definition each.
"""

from tumoraware.visualize.display import (
    evenly,
    largest_area_slice,
    load_pls,
    pad_stack,
    radiological,
    reorient_pls,
)
from tumoraware.visualize.grids import save_contour_grid, save_synthesis_grid
from tumoraware.visualize.panels import (
    CasePanel,
    extract_case_panel,
    load_case_panel,
    save_case_panel,
    save_panel_grid,
)

__all__ = [
    "CasePanel",
    "evenly",
    "extract_case_panel",
    "largest_area_slice",
    "load_case_panel",
    "load_pls",
    "pad_stack",
    "radiological",
    "reorient_pls",
    "save_case_panel",
    "save_contour_grid",
    "save_panel_grid",
    "save_synthesis_grid",
]
