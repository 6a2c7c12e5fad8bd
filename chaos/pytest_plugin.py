"""pytest plugin (registered via the pytest11 entry point). Filled in by the daily-use work."""


def pytest_configure(config):
    config.addinivalue_line("markers", "chaos(scenario, **overrides): runs a chaos scenario")
    config.addinivalue_line("markers", "soak: long soak test; runs only when asked (--chaos-soak-minutes)")
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it")
