"""INTENTIONALLY VULNERABLE sample (see README.md): never deploy. The value is a fake placeholder."""

DATABASE_USER = "admin"
# B105: hardcoded password
password = "not-a-real-secret-demo-only"
