"""The event log: projections that read a stream in order, checkpoint, and replay."""

from framework.eventlog.projection import Projection, ProjectionContext

__all__ = ["Projection", "ProjectionContext"]
