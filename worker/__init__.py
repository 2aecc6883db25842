"""compute-pools: run competition submissions and other long tasks on pools of workers fed by Service Bus."""

__version__ = "0.1.0"
