"""The operators' HTTP API (`orchestrator web`): reads from the store, actions as client
commands over AMQP. See docs/http-api.md."""
