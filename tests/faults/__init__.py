"""Fault tests: real worker processes, a real receiver on 127.0.0.1, a throwaway PostgreSQL."""
