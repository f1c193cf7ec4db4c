"""The phantom thorax world: unpaired CT and T2w MRI patients that reproduce the paper's problem.

``generate_world`` writes NIfTI volumes and a MONAI datalist; ``synthesise_scan`` renders one
volume in memory (with its tissue map) for tests and analysis.
"""

from .profiles import PROFILES, PhantomProfile, get_profile
from .scan_plan import ScanPlan
from .tissues import Tissue
from .world import build_manifest, generate_world, plan_world, synthesise_scan

__all__ = [
    "PROFILES",
    "PhantomProfile",
    "ScanPlan",
    "Tissue",
    "build_manifest",
    "generate_world",
    "get_profile",
    "plan_world",
    "synthesise_scan",
]
