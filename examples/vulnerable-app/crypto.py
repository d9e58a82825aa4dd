"""INTENTIONALLY VULNERABLE sample (see README.md): never deploy."""

import hashlib


def hash_password(password):
    # B324: MD5 is broken for password hashing
    return hashlib.md5(password.encode()).hexdigest()
