"""Session and SessionManager tests."""
