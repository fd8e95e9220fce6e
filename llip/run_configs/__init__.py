"""Every experiment is a function here returning a RunConfig; importing registers them all."""
from llip.run_configs import baselines, llip_paper, small  # noqa: F401
