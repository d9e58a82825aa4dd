"""INTENTIONALLY VULNERABLE sample (see README.md): never deploy."""

import pickle

import yaml


def load_session(blob):
    # B301: unpickling untrusted data runs arbitrary code
    return pickle.loads(blob)


def load_settings(text):
    # B506: yaml.load without SafeLoader can construct arbitrary objects
    return yaml.load(text)
