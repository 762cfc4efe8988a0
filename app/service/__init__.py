"""The service: the engine thread, the writer, start-up, stores and replication. No HTTP here:
nothing in app.service imports app.http (tests/core/test_import_graph.py checks).
"""
