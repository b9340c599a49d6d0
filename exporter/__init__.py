"""nico-task-exporter: the observability bridge for NVIDIA Infra Controller (NICo) tasks."""

__version__ = "0.1.0"
