"""Sample competitions shipped with compute-pools (used by ``pool demo``)."""

from pathlib import Path

DEMO = Path(__file__).parent / "demo"
