"""Event contracts: snapshots of the events a service consumes and publishes, and
their compatibility."""
