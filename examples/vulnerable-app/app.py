"""INTENTIONALLY VULNERABLE sample (see README.md): never deploy."""

import subprocess

import requests


def ping(host):
    # B602: user input into a shell command line (command injection)
    return subprocess.call("ping -c 1 " + host, shell=True)


def fetch_status(url):
    # B501: TLS certificate verification disabled
    return requests.get(url, verify=False, timeout=10).status_code
