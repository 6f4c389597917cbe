"""Multi-objective search: experiments, the trial body, the local Optuna driver."""
