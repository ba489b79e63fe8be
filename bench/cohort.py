"""The speakers held out for the shipped cohort and calibration, and the conditions whose embeddings it ships.

bench.calibrate fits on these speakers; every other benchmark that enrolls voices or measures
decisions leaves them out (a voice in the cohort is held against itself and never accepted).
"""
from __future__ import annotations

# Held out from evaluation: the cohort and the calibration's fitting trials. Chosen to span the
# set's collections, genders and ages (adults and children), before any score was looked at.
COHORT_SPEAKERS = (
    "fillets-cs-small", "fillets-nl-big", "vctk-p226", "vctk-p228", "speechocean-0006", "speechocean-0131",
    "speechocean-0567", "speechocean-1260", "speechocean-2016", "speechocean-2282", "speechocean-4005",
    "speechocean-8002", "speechocean-9607",
)
# Conditions whose cohort embeddings are shipped (the test side meets degraded audio).
COHORT_CONDITIONS = ("clean", "noise5", "babble10", "opus12", "g711", "crop2", "crop1.5noise10")
