"""Where things are, for every test."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"
CHART = ROOT / "charts" / "freehold"
INVALID = ROOT / "tests" / "data" / "invalid"
SHARED = ROOT.parent / "shared"
KUBERAY_CRDS = SHARED / "kuberay-crds"
