"""Local Gemini-API simulator: wire-compatible with ChatGoogleGenerativeAI, offline, deterministic.

    from coursekit.simulator import SimulatorProcess
    with SimulatorProcess(latency="realistic") as sim:
        ...  # GOOGLE_GEMINI_BASE_URL=sim.base_url, GOOGLE_API_KEY="sim-any-key"

See README.md in this folder (Korean) for flags, environment, admin API, models and faults.
"""

from .cli import add_arguments, config_from_args, serve, serve_from_args
from .config import DEFAULTS, ConfigError
from .models import cost_usd, price_for
from .process import SimulatorError, SimulatorProcess

__all__ = ["SimulatorProcess", "SimulatorError", "add_arguments", "config_from_args", "serve",
           "serve_from_args", "DEFAULTS", "ConfigError", "price_for", "cost_usd"]
