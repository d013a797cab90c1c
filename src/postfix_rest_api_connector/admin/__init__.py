"""The admin listener: Prometheus metrics (``metrics``) and health checks (``server``); imported
only when the config has a ``metrics`` section, since aiohttp costs memory."""
