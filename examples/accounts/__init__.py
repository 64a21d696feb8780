"""A bank-account example: event-sourced accounts with transfers through the outbox."""
