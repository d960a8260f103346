"""Operating kanin's queues: dead-letter queues inspected and replayed, queue health,
the topology drawn and exported. A leaf: the core never imports it."""
