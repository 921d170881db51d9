"""Our Hydra plugins: the Optuna sweeper (optuna_sweeper.py). Hydra finds them under hydra_plugins."""
