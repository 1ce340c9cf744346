"""Delivery: the scheduler (retries, backoff, lifetimes) and the transports that move mail on."""
