"""What the tests share that is not a fixture: tiny models, servers in subprocesses, fault-injecting
file systems, PostgreSQL and state helpers. The fixtures themselves are in tests/conftest.py."""
