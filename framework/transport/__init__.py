"""Transports: how kanin talks to a broker. ``amqp`` is RabbitMQ through aio-pika."""
