"""Training for the suite's adapters: one shared accelerate loop (:mod:`training.core`), thin per-adapter scripts
(``python -m training.train_<adapter>`` / ``accelerate launch -m training.train_<adapter>``) and dataset utilities
(:mod:`training.data`)."""
