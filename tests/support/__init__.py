"""What the tests share and are not tests themselves: fixtures' helpers (databases, namespaces,
engines and workers as processes), the TCP proxy, the choice of services, and the workers
that integration and fault tests run as subprocesses (`tests.support.<module>:worker`)."""
