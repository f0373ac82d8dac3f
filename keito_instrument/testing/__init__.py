"""Testing kit for keito-instrument users: a Keito-compatible server on 127.0.0.1 and pytest fixtures."""
