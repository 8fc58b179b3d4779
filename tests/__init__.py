"""turngraph test suite (a package, so test modules have unique names)."""
