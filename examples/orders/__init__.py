"""The order-fulfilment example: an order workflow over inventory actors and a payment service."""
