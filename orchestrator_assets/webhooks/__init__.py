"""Tenants' outbound webhooks: events written to an outbox with the change behind them
(``events``, ``outbox``), signed (``signing``) and delivered with backoff (``delivery``, ``assets``)."""
