"""The example shop's consumer classes (orders, inventory, payments, shipping, notifications)."""
